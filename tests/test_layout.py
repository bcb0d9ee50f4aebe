"""The package's shape: imports run one way (no loop, nothing reaching back up the layering), modules stay small,
and the package's own modules are imported at the top of each file, not inside functions to dodge a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shapetrace"

#: Lower layers never import higher ones. A layer is a private subpackage (one stage) or a public module / package;
#: modules of one subpackage may import each other, without a loop.
LAYERS = [
    {"errors", "_version"},
    {"_core"},                    # walker, tree, caches, signature, stand-ins, files, ISA
    {"manifest"},
    {"constraints", "_record", "_skeleton"},  # the manifest's constraint language; record(); the object's skeleton
    {"backends"},                 # one runner per runtime
    {"_export"},                  # one graph: trace, rewrites, writers, stateful form
    {"_verify"},                  # parity against PyTorch, its records
    {"_serve"},                   # load(): graphs behind stand-ins
    {"_flow"},                    # export_all: export, quantize, verify, static re-export
    {"_sources", "testing"},      # what the CLI records; the offline model zoo
    {"_report"},                  # HTML report, evidence, end-to-end check
    {"_cli", "__init__", "__main__"},
]
#: Imported lazily on purpose: the demo runs the zoo's tiny pipeline (heavy optional dependencies: diffusers,
#: controlnet_aux), the one place library code uses :mod:`shapetrace.testing`.
LAZY_OK = {("_cli", "testing")}
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts
        out[".".join(parts)] = path
    return out


def _top(name: str) -> str:
    """The layer key of a module: its first component (``backends.base`` -> ``backends``)."""
    return name.split(".")[0]


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """Package modules imported at module level, and inside functions."""
    tree = ast.parse(path.read_text())
    package = name.rsplit(".", 1)[0] if "." in name and path.name != "__init__.py" else name
    if path.name == "__init__.py":
        package = name if name != "__init__" else ""
    elif "." not in name:
        package = ""
    top: set[str] = set()
    local: set[str] = set()

    def targets(node: ast.AST) -> set[str]:
        found = set()
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x
                    found |= {".".join(base + [a.name]) for a in node.names}
                else:
                    found.add(mod)
            elif node.module and node.module.startswith("shapetrace"):
                found.add(node.module[len("shapetrace."):] if node.module != "shapetrace" else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("shapetrace"):
                    found.add(a.name[len("shapetrace."):] if a.name != "shapetrace" else "__init__")
        return {f for f in found if f}

    for node in tree.body:
        top |= targets(node)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                local |= targets(inner)
    return top, local


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: {_top(t) for t in _imports(name, path)[0]} - {_top(name)} for name, path in mods.items()}


def test_every_module_has_a_layer():
    assert {_top(n) for n in _modules()} <= set().union(*LAYERS)


def test_imports_never_reach_up_the_layering():
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    bad = [(n, t) for n, targets in _graph().items() for t in targets if level[t] > level[_top(n)]]
    assert bad == [], f"imports running back up the layering: {bad}"


def _fail_on_a_loop(graph: dict[str, set[str]]) -> None:
    """Depth-first over ``graph`` (node -> nodes it imports); fails naming the first loop found."""
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1 and nxt != node:
                pytest.fail(f"import loop: {' -> '.join(stack + [node, nxt])}")
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_there_is_no_import_loop():
    graph: dict[str, set[str]] = {}
    for name, targets in _graph().items():
        graph.setdefault(_top(name), set()).update(targets)
    _fail_on_a_loop(graph)


def test_own_modules_are_imported_at_the_top():
    lazy = {(_top(n), _top(t)) for n, p in _modules().items() for t in _imports(n, p)[1]}
    assert lazy <= LAZY_OK, f"function-local imports of the package's own modules: {sorted(lazy - LAZY_OK)}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_are_small(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"shapetrace/{name}.py has {lines} lines; split it (one idea per module)"


def test_library_code_never_imports_the_test_zoo_except_the_demo():
    """:mod:`shapetrace.testing` is for tests (and the demo, which runs its tiny pipeline): no other module of the
    package imports it, at the top or inside a function."""
    users = {n for n, p in _modules().items() if not n.startswith("testing")
             for t in set().union(*_imports(n, p)) if _top(t) == "testing"}
    assert users == {"_cli.demo"}, users


def test_no_import_loop_inside_a_subpackage():
    _fail_on_a_loop({name: {t for t in _imports(name, path)[0] if t in _modules() or f"{t}.__init__" in _modules()}
                     for name, path in _modules().items()})


README = PACKAGE.parent / "README.md"
MANUAL = [README, *sorted((PACKAGE.parent / "docs").glob("*.md"))]


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_name_the_manual_documents_resolves_as_written():
    """Every dotted ``shapetrace.x.y`` and every ``from shapetrace import ...`` in the README and docs/ resolves."""
    import re

    text = "\n".join(p.read_text() for p in MANUAL)
    names = set(re.findall(r"\bshapetrace(?:\.[A-Za-z_]\w*)+", text))
    names |= {f"shapetrace.{n.strip()}" for line in re.findall(r"from shapetrace import ([\w, ]+)", text)
              for n in line.split(",")}
    assert len(names) > 20
    assert sorted(n for n in names if not _resolves(n)) == []


TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    """The modules a file imports (``from . import x`` counts as ``x``), anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found


def test_tests_share_code_through_conftest_and_helper_modules_never_a_test_module():
    """A test file takes shared code from conftest.py's fixtures and the helper modules beside it (``_tiny.py``,
    ``browser.py``), never by importing another ``test_*.py`` (its tests would be collected again where imported)
    or conftest.py itself."""
    bad = sorted(f"{path.name} imports {name}" for path in TESTS.glob("*.py") for name in _imported_modules(path)
                 if name.split(".")[0] in {"tests", "conftest"} or name.split(".")[0].startswith("test_"))
    assert bad == []
