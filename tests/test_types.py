"""The type checker as a test: mypy on the package (config in setup.cfg, ``[mypy]``) with zero errors.

Strict on the spine (errors, annotations, store, formats, cv_utils, video_utils), mypy's defaults for
the rest. This file is checked in the same run: :func:`_store_is_both` is mypy's proof that
:class:`~dl_utils.store.AnnotationStore` satisfies the store protocols, the ``isinstance`` test
below the runtime one. The cache lives in ``.mypy_cache/`` (git-ignored): a first run takes about
half a minute, later ones a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dl_utils.store import AnnotationStore, StoreReader, StoreReaderWriter, StoreWriter

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".mypy_cache"


def _mypy(*targets: str) -> subprocess.CompletedProcess[str]:
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.fail("mypy is not installed: pip install mypy (./run.sh test installs the test extra)")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"),
           "--cache-dir", str(CACHE), "--no-color-output", "--no-error-summary", *targets]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _store_is_both(store: AnnotationStore) -> tuple[StoreReader, StoreWriter, StoreReaderWriter]:
    """Checked by mypy (see test_mypy_finds_no_errors): fails to type-check if AnnotationStore
    stops satisfying a protocol (a method renamed, a parameter changed)."""
    reader: StoreReader = store
    writer: StoreWriter = store
    both: StoreReaderWriter = store
    return reader, writer, both


@pytest.mark.slow
def test_mypy_finds_no_errors():
    r = _mypy("-p", "dl_utils", "-m", "tests.test_types")
    assert r.returncode == 0, f"mypy found errors (fix them, or see setup.cfg [mypy]):\n{r.stdout}{r.stderr}"


def test_annotation_store_satisfies_the_store_protocols(tmp_path):
    store = AnnotationStore.create(tmp_path / "s.sqlite")
    try:
        assert isinstance(store, StoreReader)
        assert isinstance(store, StoreWriter)
        assert isinstance(store, StoreReaderWriter)
        assert _store_is_both(store) == (store, store, store)
    finally:
        store.close()
    assert not isinstance(object(), StoreReader)


@pytest.mark.slow
def test_mypy_refuses_a_store_that_misses_a_method(tmp_path):
    """The protocols bite: a reader without ``iter_frames`` is not a StoreReader for mypy."""
    snippet = tmp_path / "half_store.py"
    snippet.write_text(textwrap.dedent("""
        from pathlib import Path
        from dl_utils.formats import export_store

        class HalfStore:
            path = Path("x.sqlite")
            media = None
            def labels(self) -> list: return []
            def objects(self) -> list: return []

        export_store(HalfStore(), "coco", "out.json")
    """))
    r = _mypy(str(snippet))
    assert r.returncode != 0 and '"HalfStore"' in r.stdout and "StoreReader" in r.stdout, r.stdout + r.stderr
