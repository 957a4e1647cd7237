"""The house rules of docs/architecture.md, checked on the source: arrows point one way, no
import cycles, every module says on its first line the one thing it holds, function-local
imports only where they pay; a file over 500 lines is a warning, over 800 a failure."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nmfseg"
LONG_LINES = 500  # above: a warning (a module that may hold two things)
MAX_LINES = 800  # above: a failure

# What each floor may import from nmfseg (besides itself and the root package, which holds
# only the version and lazy exports). Read top to bottom: every floor sits on those above it.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "units": set(),
    "text": {"errors"},
    "fileio": {"errors", "units"},
    "plotting": {"errors", "units", "fileio"},  # the one style of every figure
    "registry": {"errors"},
    "routes": set(),  # execution routes and precision: torch and the stdlib only
    "nmf": {"routes"},  # the NMF core imports only torch (and the precision helpers)
    "layers": {"nmf", "routes"},
    "mixers": {"layers", "nmf", "routes", "errors", "registry"},
    "blocks": {"mixers", "layers", "nmf", "routes", "errors", "registry"},
    "models": {"blocks", "mixers", "layers", "nmf", "routes", "errors", "fileio", "registry"},
    "data": {"errors", "fileio", "registry"},
    "phantoms": {"data", "errors", "fileio", "registry", "plotting"},
    "evaluation": {"data", "errors", "fileio", "registry", "plotting"},
    "device": {"errors"},
    "inference": {
        "data",
        "models",
        "mixers",
        "layers",
        "nmf",
        "errors",
        "fileio",
        "registry",
        "device",
        "text",
    },
}
_LOW = {
    "errors",
    "units",
    "text",
    "fileio",
    "plotting",
    "registry",
    "device",
    "routes",
    "nmf",
    "layers",
    "mixers",
    "blocks",
    "models",
    "data",
}
ALLOWED["training"] = _LOW | {"inference", "evaluation"}
ALLOWED["analysis"] = {
    "data",
    "models",
    "mixers",
    "layers",
    "nmf",
    "routes",
    "inference",
    "evaluation",
    "fileio",
    "plotting",
    "errors",
    "units",
    "text",
    "registry",
    "device",
}
ALLOWED["study"] = _LOW | {"phantoms", "inference", "evaluation", "training"}
ALLOWED["demo"] = _LOW | {"phantoms", "inference", "evaluation", "training", "analysis"}
ALLOWED["export"] = _LOW | {"inference"}
ALLOWED["nnunet"] = _LOW | {"training", "inference", "evaluation"}
ALLOWED["cli"] = set(ALLOWED) | {"study", "demo", "cli"}

# Imports worth deferring into a function: they cost seconds, or only some paths need them.
HEAVY = (
    "torch",
    "monai",
    "matplotlib",
    "scipy",
    "nilearn",
    "onnx",
    "onnxruntime",
    "openvino",
    "nnunetv2",
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _target(name: str) -> str:
    """The nmfseg module an imported name lives in (a submodule, or its package)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(tree: ast.Module, top_level: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of the imports at module level, or of those inside functions."""
    found = []
    nodes = tree.body if top_level else [n for n in ast.walk(tree) if _in_function(n, tree)]
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _in_function(node: ast.AST, tree: ast.Module) -> bool:
    return isinstance(node, ast.Import | ast.ImportFrom) and node in _FUNCTION_IMPORTS[id(tree)]


_FUNCTION_IMPORTS: dict[int, set[ast.AST]] = {}


def _parse(path: Path) -> ast.Module:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inner: set[ast.AST] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inner.update(n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom))
    _FUNCTION_IMPORTS[id(tree)] = inner
    return tree


TREES = {name: _parse(path) for name, path in MODULES.items()}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, tree in TREES.items():
        edges = set()
        for _, imported in _imports(tree, top_level=True):
            if imported.startswith("nmfseg."):
                target = _target(imported)
                if target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_file_over_800_lines_and_a_warning_over_500(name):
    """Length is a hint, not the rule: a long module is worth a look (is it two things?),
    and only one far too long to read fails."""
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines"
    if lines > LONG_LINES:
        warnings.warn(f"{MODULES[name]} has {lines} lines (> {LONG_LINES})", stacklevel=1)


#: First words of a summary that names no one thing: a module of leftovers.
GRAB_BAGS = ("util", "helper", "misc", "common", "various", "stuff", "tools", "functions")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_on_its_first_line_what_it_holds(name):
    """The rule behind the length: a module is one thing, named by the first line of its
    docstring. Checked simply: the docstring exists, its summary starts on its first line,
    and that line does not start with a word of leftovers ("Utilities", "Helpers", ...)."""
    docstring = ast.get_docstring(TREES[name], clean=False)
    assert docstring, f"{MODULES[name]} has no module docstring"
    first = docstring.splitlines()[0].strip()
    assert first, f"{MODULES[name]}: the docstring's first line is empty"
    word = first.strip("`:*").lower()
    assert not word.startswith(GRAB_BAGS), f"{MODULES[name]}: {first!r} names no one thing"


def test_arrows_point_one_way():
    bad = []
    for name, edges in _graph().items():
        floor = _floor(name)
        if floor not in ALLOWED:
            continue  # the root package and single-module floors are checked by name below
        for target in edges:
            dest = _floor(target)
            if dest and dest != floor and dest not in ALLOWED[floor]:
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_every_floor_is_known():
    floors = {_floor(name) for name in MODULES} - {"", "__main__"}
    assert floors <= set(ALLOWED), f"add {floors - set(ALLOWED)} to ALLOWED (and the docs)"


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_function_local_imports_only_at_the_cli_boundary_or_for_heavy_modules():
    bad = []
    for name, tree in TREES.items():
        if name.startswith("nmfseg.cli"):
            continue  # command bodies defer their imports so that `nmfseg --help` is instant
        for line, imported in _imports(tree, top_level=False):
            if not imported.startswith(HEAVY):
                bad.append(f"{MODULES[name]}:{line} imports {imported} inside a function")
    assert not bad, "\n".join(bad)


STDLIB_OF_THE_CORE = ("__future__", "math", "itertools", "collections", "dataclasses", "contextlib",
                      "functools", "typing", "enum", "warnings")  # fmt: skip


def test_the_nmf_core_imports_only_torch():
    for name, tree in TREES.items():
        if not name.startswith(("nmfseg.nmf", "nmfseg.routes")):
            continue
        for _, imported in _imports(tree, top_level=True):
            root = imported.split(".")[0]
            assert root in ("torch", "nmfseg", *STDLIB_OF_THE_CORE), f"{name} imports {imported}"
