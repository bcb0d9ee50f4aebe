"""The package's shape: imports run one way (no loop, nothing reaching back up the layering), modules stay small,
and the package's own modules are imported at the top of each file, not inside functions to dodge a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shapetrace"

#: Lower layers never import higher ones (modules of one layer may import each other, without a loop).
LAYERS = [
    {"errors", "_version", "_optional", "files", "exitcodes", "isa"},
    {"walker", "caches", "datachecks", "jittrace", "loops", "branches", "portable", "onnx_checks", "tree", "signature", "standin", "samples", "inplace", "decomplex", "modstate"},
    {"recording", "recorder", "proxy"},
    {"dims", "constraints", "manifest"},
    {"flat", "writers", "compare", "report", "inputs", "metrics", "matching", "backends", "evidence", "quality",
     "selection", "rejudge"},
    {"verify", "serve", "stateful", "fit", "tracing"},
    {"graph_export", "export", "runtime", "quantize"},
    {"__init__", "demo", "cli", "__main__", "testing", "cli_export", "sources", "hf_sources", "e2e", "report_plots",
     "html_report"},
]
#: Modules imported lazily on purpose: the demo's heavy optional dependencies (diffusers, controlnet_aux).
LAZY_OK = {("demo", "testing")}
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


def test_there_is_no_import_loop():
    graph: dict[str, set[str]] = {}
    for name, targets in _graph().items():
        graph.setdefault(_top(name), set()).update(targets)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail(f"import loop: {' -> '.join(stack + [node, nxt])}")
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_own_modules_are_imported_at_the_top():
    lazy = {(_top(n), _top(t)) for n, p in _modules().items() for t in _imports(n, p)[1]}
    assert lazy <= LAZY_OK, f"function-local imports of the package's own modules: {sorted(lazy - LAZY_OK)}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_are_small(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"shapetrace/{name}.py has {lines} lines; split it (one idea per module)"
