"""Pre-rename home of :mod:`dl_utils.dinoal.caption` (``Prompt`` is now ``Caption``,
``parse_prompt`` ``parse_caption``).

Kept so notebooks and modules written against the old names (``from dl_utils.dinoal.prompts import
parse_prompt``) still import; new code imports from :mod:`dl_utils.dinoal.caption`.
"""

from . import caption as _caption
from .caption import *  # noqa: F403  (the same names, one list: caption.__all__)

__all__ = list(_caption.__all__)
