"""Allow ``python -m dl_utils``."""

import sys

from .cli import main

sys.exit(main())
