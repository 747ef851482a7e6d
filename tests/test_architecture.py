"""The layer rule of docs/architecture.md ("Layers and the import rule"), checked on the source.

Every module of ``dl_utils/`` is parsed with :mod:`ast` (nothing is imported), every import in it is
collected (module level, inside functions, under ``if TYPE_CHECKING:``; relative and absolute) and
resolved to the ``dl_utils`` module it names. Each module belongs to one layer (``LAYERS``); a module
may import its own layer or a lower one, engines and sinks never import each other, and only the UI
layer imports the UI. ``KNOWN`` lists the violations the tree has today, each with its reason: the
test fails on any other violation and on a ``KNOWN`` entry that no longer occurs (delete it then), so
the list only shrinks. A second test checks that module-level imports form no cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dl_utils"

# Layers, lowest first. Engines and sinks share a rank: side by side, neither imports the other.
RANKS = {
    "errors": 0,
    "annotations": 1,
    "base": 2,
    "store": 3,
    "engines": 4,
    "sinks": 4,
    "drivers": 5,
    "ui": 6,
}

# Every top-level module or package of dl_utils/ -> its layer ("__init__" is dl_utils/__init__.py,
# which holds only __version__). A new module must be added here (test_every_module_has_a_layer).
LAYERS = {
    "__init__": "errors",
    "errors": "errors",
    "annotations": "annotations",
    "cv_utils": "base",
    "video_utils": "base",
    "classes": "base",
    "splits": "base",
    "store": "store",
    "models": "engines",
    "sam2_loader": "engines",
    "dino_models": "engines",
    "sam3_weights": "engines",
    "samal": "engines",
    "sam2al": "engines",
    "sam3al": "engines",
    "dinoal": "engines",
    "tracking": "engines",
    "interactive": "engines",
    "finetune": "engines",
    "formats": "sinks",
    "cvat": "sinks",
    "datasets": "sinks",
    "annotate": "drivers",
    "auto_annotation": "drivers",
    "drivers": "drivers",
    "batch": "drivers",
    "ipy_utils": "ui",
    "cli": "ui",
    "__main__": "ui",
}

# The violations in today's tree, (importer, imported): both dotted module names as resolved by
# _imports() below, each with why it is there. Remove an entry when its import goes; the test says so.
# None today: the layers hold as imports (what sits in the wrong layer is code, see KNOWN_CLI).
KNOWN: dict[tuple[str, str], str] = {}

# Command-line code (a function that adds arguments to an argparse parser, or one named *_cli or
# cmd_*) belongs to the drivers or the UI. Where it sits lower today, (module, function): why.
# None today: the dl-utils cvat subcommands moved from the sink package to dl_utils.drivers.cvat.
KNOWN_CLI: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. "dl_utils.cvat.push"
    imported: str  # the dl_utils module it resolves to, e.g. "dl_utils.store"
    line: int
    module_level: bool  # executed on import (not in a function, not under TYPE_CHECKING)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The dl_utils module ``name`` names (a module, or the package whose attribute it is)."""
    if name != "dl_utils" and not name.startswith("dl_utils."):
        return None
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> list[Import]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    found: list[Import] = []

    def add(name: str, node: ast.stmt, module_level: bool) -> None:
        target = _resolve(name)
        if target is not None and target != module:
            found.append(Import(module, target, node.lineno, module_level))

    def visit(node: ast.AST, module_level: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, module_level)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # "from . import x" / "from .pkg import sub" import a module when one has that name
                sub = f"{source}.{alias.name}"
                add(sub if sub in MODULES else source, node, module_level)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.iter_child_nodes(node):
                visit(child, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, module_level)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, module_level)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return found


ALL_IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> str:
    return LAYERS[_top(module)]


def _violation(importer: str, imported: str) -> str | None:
    """Why importer may not import imported, or None when it may."""
    if _top(importer) == _top(imported):
        return None
    mine, theirs = _layer(importer), _layer(imported)
    if {mine, theirs} == {"engines", "sinks"}:
        return f"{mine} never import {theirs}"
    if RANKS[theirs] > RANKS[mine]:
        return f"{mine} imports the higher layer {theirs}"
    return None


def _violations() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for imp in ALL_IMPORTS:
        why = _violation(imp.importer, imp.imported)
        if why is not None:
            where = f"{MODULES[imp.importer].relative_to(ROOT)}:{imp.line} ({why})"
            out.setdefault((imp.importer, imp.imported), []).append(where)
    return out


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in MODULES} - set(LAYERS))
    assert not missing, f"add these dl_utils modules to LAYERS in {__file__}: {missing}"
    assert set(LAYERS.values()) <= set(RANKS)


def test_the_import_parser_sees_every_form(tmp_path):
    """Relative, absolute, from-package, function-level and TYPE_CHECKING imports all resolve."""
    source = tmp_path / "x.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import dl_utils.store\n"
        "from . import errors\n"
        "from .cv_utils import rle\n"
        "from dl_utils import annotations\n"
        "if TYPE_CHECKING:\n"
        "    from .cvat import push\n"
        "def f():\n"
        "    from .sam2al import VideoSession\n"
        "    import dl_utils.formats.coco as c\n",
        encoding="utf-8",
    )
    got = {(i.imported, i.module_level) for i in _imports("dl_utils.x", source)}
    assert got == {
        ("dl_utils.store", True),
        ("dl_utils.errors", True),
        ("dl_utils.cv_utils.rle", True),
        ("dl_utils.annotations", True),
        ("dl_utils.cvat.push", False),
        ("dl_utils.sam2al", False),
        ("dl_utils.formats.coco", False),
    }
    # a submodule of a package: "from .." climbs one package, "from ." stays in it
    source.write_text("from ..store import AnnotationStore\nfrom . import pull\nfrom .push import push\n")
    got = {i.imported for i in _imports("dl_utils.cvat.x", source)}
    assert got == {"dl_utils.store", "dl_utils.cvat.pull", "dl_utils.cvat.push"}


def test_the_rule_itself():
    assert _violation("dl_utils.store", "dl_utils.annotations") is None
    assert _violation("dl_utils.sam2al.session", "dl_utils.sam2al.frames") is None
    assert _violation("dl_utils.annotations", "dl_utils.store") is not None
    assert _violation("dl_utils.cvat.push", "dl_utils.samal") is not None  # sink -> engine
    assert _violation("dl_utils.dinoal.video", "dl_utils.formats") is not None  # engine -> sink
    assert _violation("dl_utils.drivers.run", "dl_utils.cvat") is None
    assert _violation("dl_utils.annotate", "dl_utils.ipy_utils") is not None
    assert _violation("dl_utils.cli", "dl_utils.ipy_utils") is None


def test_no_lower_layer_imports_a_higher_one():
    found = _violations()
    new = {k: v for k, v in found.items() if k not in KNOWN}
    gone = sorted(k for k in KNOWN if k not in found)
    assert not new, "imports against the layer rule (docs/architecture.md):\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(where)}" for (a, b), where in sorted(new.items())
    )
    assert not gone, f"no longer violated, delete from KNOWN in {__file__}: {gone}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_cycle_finder():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if imp.module_level:
            edges[imp.importer].add(imp.imported)
    assert _cycles(edges) == []



_PARSER_CALLS = {"add_argument", "add_parser", "add_subparsers", "add_argument_group",
                 "add_mutually_exclusive_group", "ArgumentParser", "set_defaults"}


def _cli_functions(module: str, path: Path) -> set[str]:
    """Top-level functions of ``module`` that are command-line code."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.name.endswith("_cli") or node.name.startswith("cmd_"):
            found.add(node.name)
            continue
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                func = call.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name in _PARSER_CALLS:
                    found.add(node.name)
                    break
    return found


def test_command_line_code_lives_in_drivers_or_ui():
    found = {
        (module, name)
        for module, path in MODULES.items()
        if RANKS[_layer(module)] < RANKS["drivers"]
        for name in _cli_functions(module, path)
    }
    new = sorted(found - set(KNOWN_CLI))
    gone = sorted(set(KNOWN_CLI) - found)
    assert not new, f"command-line code below the drivers layer (move it to dl_utils/drivers): {new}"
    assert not gone, f"no longer there, delete from KNOWN_CLI in {__file__}: {gone}"


def _graph() -> dict[str, set[str]]:
    """Top-level module -> the other top-level modules it imports (any import form)."""
    edges: dict[str, set[str]] = {m: set() for m in LAYERS}
    for module, path in _modules().items():
        for imp in _imports(module, path):
            a, b = _top(imp.importer), _top(imp.imported)
            if a != b:
                edges[a].add(b)
    return edges


def test_import_graph_in_the_docs_is_the_code():
    """docs/architecture.md's "Import graph" table is the graph the code has, row for row."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Import graph", 1)[1]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], {c.strip().strip("`") for c in cells[2].split(",")} - {"—"})
    code = _graph()
    code.pop("__init__")
    assert set(rows) == set(code), "modules missing from / unknown to the table: " + str(set(rows) ^ set(code))
    for module, (layer, imports) in rows.items():
        assert layer == LAYERS[module], f"{module}: the table says layer {layer}, LAYERS says {LAYERS[module]}"
        assert imports == code[module], (
            f"{module}: the docs list {sorted(imports)}, the code imports {sorted(code[module])}; "
            "redraw the table in docs/architecture.md"
        )
