"""Size and typing figures of dl_utils/, measured with ast (issue 14's numbers, re-measured the same way).

Prints:

* parameters: every parameter of every ``def``/``async def`` (positional-only, positional, keyword-only,
  ``*args``, ``**kwargs``; ``self`` and ``cls`` left out; lambdas left out), how many are annotated
  exactly ``Any`` (``Any``, ``typing.Any`` or the string ``"Any"``), how many mention ``Any`` anywhere in
  their annotation (``Any | None``, ``dict[str, Any]``...), and how many are not annotated;
* the ten longest functions (methods and nested functions included; lines from ``def`` to the last line
  of the body, decorators not counted) and how many are over 80 and over 100 lines;
* the length of the ``Annotator`` class (``class`` line to last line) and of its file;
* with ``--duplicates``: runs ``duplicates --most 30 --seconds 60`` in the repository and counts the
  rows whose two sides are both in ``dl_utils/``; then ``duplicates --repo dl_utils --most 200`` for
  the number of all pairs inside ``dl_utils/`` (its first line).

    .venv/bin/python bench/code_metrics.py [--duplicates]
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dl_utils"


def _is_any(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "Any"
    if isinstance(node, ast.Attribute):
        return node.attr == "Any" and isinstance(node.value, ast.Name) and node.value.id == "typing"
    if isinstance(node, ast.Constant):
        return node.value == "Any"
    return False


def _mentions_any(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.search(r"\bAny\b", node.value) is not None
    return any(_is_any(n) for n in ast.walk(node) if isinstance(n, ast.expr))


def measure() -> dict:
    params = any_exact = any_mention = unannotated = 0
    functions: list[tuple[int, str, str]] = []
    annotator: tuple[str, int] | None = None
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(encoding="utf-8"), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "Annotator":
                annotator = (rel, node.end_lineno - node.lineno + 1)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            functions.append((node.end_lineno - node.lineno + 1, rel, node.name))
            a = node.args
            args = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x)]
            for arg in args:
                if arg.arg in ("self", "cls"):
                    continue
                params += 1
                if arg.annotation is None:
                    unannotated += 1
                elif _is_any(arg.annotation):
                    any_exact += 1
                    any_mention += 1
                elif _mentions_any(arg.annotation):
                    any_mention += 1
    functions.sort(key=lambda f: (-f[0], f[1], f[2]))
    return {
        "params": params,
        "any_exact": any_exact,
        "any_mention": any_mention,
        "unannotated": unannotated,
        "functions": len(functions),
        "longest": functions[:10],
        "over_80": sum(1 for f in functions if f[0] > 80),
        "over_100": sum(1 for f in functions if f[0] > 100),
        "annotator": annotator,
    }


def _run_duplicates(*args: str) -> str:
    exe = shutil.which("duplicates")
    if exe is None:
        return "duplicates: not on PATH"
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout


def duplicates() -> tuple[int, int, str, str]:
    """(rows listed, rows with both sides in dl_utils/, first line of the whole-tree run,
    first line of the dl_utils/-only run)."""
    out = _run_duplicates("--most", "30", "--seconds", "60")
    rows = [line.split() for line in out.splitlines() if re.match(r"D\d+ ", line)]
    inside = sum(1 for r in rows if r[1].startswith("dl_utils/") and r[3].startswith("dl_utils/"))
    only = _run_duplicates("--repo", "dl_utils", "--most", "200", "--seconds", "60")
    return len(rows), inside, (out.splitlines() or [""])[0], (only.splitlines() or [""])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duplicates", action="store_true", help="also run `duplicates --most 30 --seconds 60`")
    args = ap.parse_args()
    m = measure()
    print(f"parameters: {m['params']} (self/cls left out) in {m['functions']} functions; typed exactly Any:"
          f" {m['any_exact']}; mentioning Any: {m['any_mention']}; not annotated: {m['unannotated']}")
    print(f"functions over 80 lines: {m['over_80']}; over 100 lines: {m['over_100']}")
    print("ten longest functions (lines):")
    for lines, rel, name in m["longest"]:
        print(f"  {lines:4d}  {rel}  {name}")
    if m["annotator"]:
        print(f"Annotator class: {m['annotator'][1]} lines ({m['annotator'][0]})")
    else:
        print("Annotator class: not found")
    if args.duplicates:
        listed, inside, head, only = duplicates()
        print(f"duplicates --most 30 --seconds 60: {head}")
        print(f"  rows listed: {listed}; both sides in dl_utils/: {inside}")
        print(f"duplicates --repo dl_utils --most 200 --seconds 60: {only}")


if __name__ == "__main__":
    main()
