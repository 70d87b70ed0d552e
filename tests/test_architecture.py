"""The import rules of the house (docs/architecture.md), read statically from vramplan/.

Every `import` and `from ... import` under vramplan/, at module level or inside a function, is
resolved to a vramplan module (`from pkg import name` where pkg/name.py exists counts as importing
that module) and checked against the rules below. Each failure names the file, the line and the
rule. Nothing is imported: the source is read with `ast`. An import under `if TYPE_CHECKING:`
counts like any other (it is still a dependency); dynamic imports (`importlib.import_module`, as
engines/registry.py uses for engines) are not seen.

`ALLOWED` lists, per rule, the deliberate exceptions, each with its reason. It may only shrink:
an entry that no longer occurs fails the stale check, so whoever removes an exception also
deletes its entry.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "vramplan"

# Optional extras that may be imported inside a function, so that the analytic path never pays
# for them (benchmarks/bench_fit.py: "heavy imports: none").
HEAVY = {"torch", "transformers", "peft", "accelerate", "bitsandbytes", "pynvml", "matplotlib",
         "huggingface_hub", "safetensors"}

# Mode strings belong to the edge: the CLI and the API read them, request.py maps them to engines.
MODES = {"serve", "infer", "full", "lora", "qlora"}
MODE_EDGE = ("vramplan.request", "vramplan.api", "vramplan.cli", "vramplan.render")
# The HF Trainer engine's own training methods are spelled like the modes that select it.
# Words an engine owns: the HF Trainer's training methods. The trace tier replays the trainer's
# step (trace/training.py, trace/recipe.py) and names the program it runs by the same word
# (trace/run.py's Scenario.mode, which verify --level run executes too), so it shares them.
ENGINE_OWN_WORDS = {"vramplan.engines.hf_trainer": {"full", "lora", "qlora"},
                    "vramplan.trace.training": {"full", "lora", "qlora"},
                    "vramplan.trace.recipe": {"full", "lora", "qlora"},
                    "vramplan.trace.run": {"infer", "serve", "full", "lora", "qlora"}}


# -- reading the graph ------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    src: str            # importing module
    dst: str            # imported module (a vramplan module, or the top-level name of another)
    path: str           # file, relative to the checkout
    line: int
    local: bool         # inside a function body

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every .py under root/package (packages by their __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path], package: str) -> str:
    """The longest prefix of `name` that is a module of the package; other imports by their
    top-level name."""
    if name.split(".")[0] != package:
        return name.split(".")[0]
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or package


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict[str, Path], package: str,
                 path: str):
        self.module, self.is_package, self.modules, self.package = module, is_package, modules, package
        self.path, self.depth, self.edges = path, 0, []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, name: str, node: ast.AST) -> None:
        dst = _resolve(name, self.modules, self.package)
        if dst != self.module:
            self.edges.append(Edge(self.module, dst, self.path, node.lineno, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            if not self.is_package:
                base.pop()
            base = base[:len(base) - (node.level - 1)]
            parent = ".".join(base + ([node.module] if node.module else []))
        else:
            parent = node.module or ""
        for alias in node.names:
            sub = f"{parent}.{alias.name}"
            self._add(sub if sub in self.modules else parent, node)


def read_imports(root: Path, package: str = PACKAGE) -> list[Edge]:
    modules = module_names(root, package)
    edges = []
    for module, path in modules.items():
        visitor = _Imports(module, path.name == "__init__.py", modules, package,
                           str(path.relative_to(root)))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges += visitor.edges
    return edges


def inside(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# -- the rules -------------------------------------------------------------------------------


def _graph(edges: list[Edge], package: str) -> dict[str, dict[str, Edge]]:
    """src -> dst -> the first edge between them, for imports of the package's own modules."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        if inside(e.dst, package):
            graph.setdefault(e.src, {}).setdefault(e.dst, e)
    return graph


def _components(graph: dict[str, dict[str, Edge]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def strongconnect(v: str) -> None:         # the graph is small: recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return comps


def _path(graph: dict[str, dict[str, Edge]], comp: frozenset[str], src: str, dst: str) -> list[Edge]:
    """The shortest chain of imports from src to dst inside one component (breadth first)."""
    prev: dict[str, str] = {}
    frontier, seen = [src], {src}
    while dst not in seen:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w in comp and w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    chain = [dst]
    while chain[-1] != src:
        chain.append(prev[chain[-1]])
    chain.reverse()
    return [graph[a][b] for a, b in zip(chain, chain[1:])]


def find_cycles(edges: list[Edge], package: str = PACKAGE,
                known: tuple[frozenset[str], ...] = ()) -> list[tuple[frozenset[str], list[Edge]]]:
    """Each tangle of modules that import each other (a strongly connected component) not in
    `known`, with one cycle through it to show: through its first module, or, when `known` is
    given, through an import that closes it and that no known tangle has (a local one).

    Importing `a.b.c` runs `a/b/__init__.py` first, but that implicit step is not an edge: a
    package's __init__ that re-exports its own submodules would otherwise close a cycle with
    every one of them. An explicit `from a.b import name` where `name` is defined in the
    __init__ is an edge to `a.b`, so a submodule that reads its package's re-exports back is
    still reported. No other exception is made."""
    graph = _graph(edges, package)
    out = []
    for comp in _components(graph):
        if comp in known:
            continue
        inner = sorted((e for v in comp for w, e in graph.get(v, {}).items() if w in comp),
                       key=lambda e: (not e.local, e.src, e.dst))
        closing = inner[0] if known else graph[min(comp)][min(w for w in graph[min(comp)] if w in comp)]
        out.append((comp, [closing] + _path(graph, comp, closing.dst, closing.src)))
    return sorted(out, key=lambda c: sorted(c[0]))


def show_cycle(cycle: list[Edge]) -> str:
    return " -> ".join(f"{e.src} ({e.where}{', local' if e.local else ''})" for e in cycle) + \
        f" -> {cycle[0].src}"


# (importing package, forbidden packages): layering.
FORBIDDEN = {
    "memory is pure formulas": ("vramplan.memory", (
        "vramplan.engines", "vramplan.models", "vramplan.planner", "vramplan.suggestions",
        "vramplan.api", "vramplan.cli", "vramplan.render", "vramplan.trace", "vramplan.compare",
        "vramplan.verify", "vramplan.probe", "vramplan.sources", "vramplan.catalog",
        "vramplan.loading")),
    "engines never see models, the edge or the sources": ("vramplan.engines", (
        "vramplan.models", "vramplan.api", "vramplan.cli", "vramplan.render", "vramplan.loading",
        "vramplan.sources")),
    "models parse configs, nothing more": ("vramplan.models", (
        "vramplan.engines", "vramplan.memory", "vramplan.planner", "vramplan.api", "vramplan.cli",
        "vramplan.render")),
    "derive reads a config through transformers, nothing more": ("vramplan.derive", (
        "vramplan.engines", "vramplan.memory", "vramplan.planner", "vramplan.suggestions", "vramplan.api",
        "vramplan.cli", "vramplan.render", "vramplan.loading", "vramplan.sources", "vramplan.compare",
        "vramplan.verify", "vramplan.probe")),
}
# (importing package, the only vramplan packages it may import): the leaves of the house.
ONLY = {
    "spec is plain data": ("vramplan.spec", ("vramplan.spec", "vramplan.errors", "vramplan.units")),
    "the CLI speaks only to the API and the renderers": ("vramplan.cli", (
        "vramplan.api", "vramplan.render", "vramplan.errors", "vramplan.cli")),
}


def layering_violations(edges: list[Edge], package: str = PACKAGE,
                        forbidden: dict = FORBIDDEN, only: dict = ONLY) -> dict[str, list[Edge]]:
    out: dict[str, list[Edge]] = {rule: [] for rule in [*forbidden, *only]}
    for e in edges:
        if not inside(e.dst, package):
            continue
        for rule, (src, banned) in forbidden.items():
            if inside(e.src, src) and inside(e.dst, *banned):
                out[rule].append(e)
        for rule, (src, allowed) in only.items():
            if inside(e.src, src) and not inside(e.dst, *allowed):
                out[rule].append(e)
    return out


def heavy_modules(edges: list[Edge], package: str = PACKAGE) -> set[str]:
    """The package's modules that import a heavy extra when they are imported (directly or
    through their module-level imports): the trace tier's torch code, for one. Importing one of
    them late is importing torch late, so it is allowed where torch is."""
    heavy = {e.src for e in edges if not e.local and e.dst in HEAVY}
    while True:
        more = {e.src for e in edges if not e.local and e.dst in heavy} - heavy
        if not more:
            return heavy
        heavy |= more


def local_imports(edges: list[Edge]) -> list[Edge]:
    """Imports inside a function body of anything but an optional heavy extra."""
    heavy = HEAVY | heavy_modules(edges)
    return [e for e in edges if e.local and e.dst not in heavy]


@dataclass(frozen=True)
class ModeCompare:
    module: str
    word: str
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _mode_words(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & MODES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_mode_words(e) for e in node.elts)) if node.elts else set()
    return set()


def mode_compares(root: Path, package: str = PACKAGE) -> list[ModeCompare]:
    """Mode string literals compared with ==, !=, in, not in outside the edge."""
    out = []
    for module, path in module_names(root, package).items():
        if inside(module, *MODE_EDGE):
            continue
        own = set().union(*(w for p, w in ENGINE_OWN_WORDS.items() if inside(module, p)))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                continue
            words = set().union(*(_mode_words(n) for n in [node.left, *node.comparators])) - own
            out += [ModeCompare(module, w, str(path.relative_to(root)), node.lineno)
                    for w in sorted(words)]
    return sorted(out, key=lambda m: (m.path, m.line, m.word))


# -- what the code still does today (issue #11 in progress); may only shrink ------------------

# Keys carry no line numbers, so that edits elsewhere in a file do not churn them.

# (the modules of the tangle, sorted)
ALLOWED_TODAY_CYCLES: set[tuple[str, ...]] = set()
# (importer, imported)
ALLOWED_TODAY_LAYERING: set[tuple[str, str]] = set()
# (importer, imported): light modules loaded late only to keep every start-up of `vramplan fit`
# fast (benchmarks/bench_fit.py, budget 0.25 s); each costs about 10 ms and is needed only on
# some paths.
ALLOWED_TODAY_LOCAL: set[tuple[str, str]] = {
    ("vramplan.catalog", "difflib"),                     # only for "did you mean" in error messages
    ("vramplan.request", "importlib"),                   # importlib.metadata: the installed transformers
    ("vramplan.request", "vramplan.engines.hf_trainer.options"),   # training flags: serve never loads the trainer
    ("vramplan.methods", "vramplan.trace"),              # the trace tier: only for --method trace
    ("vramplan.targets", "vramplan.probe"),              # NVML probing: only for --gpu auto
}
# (importer, mode word)
ALLOWED_TODAY_MODES: set[tuple[str, str]] = set()


# -- the tests -------------------------------------------------------------------------------

EDGES = read_imports(ROOT)

RULE_CYCLES = "import cycles among vramplan modules (a function-local import that closes one counts):"
RULE_LAYERING = "forbidden imports (docs/architecture.md, 'What may import what'):"
RULE_LOCAL = (f"function-local imports: hoist them to module level; only the optional extras "
              f"({', '.join(sorted(HEAVY))}) and vramplan modules that import them may load late:")
RULE_MODES = ("mode strings (" + ", ".join(sorted(MODES)) + ") compared outside the edge "
              "(request.py, api.py, cli/, render/; the HF Trainer's own full/lora/qlora in "
              "engines/hf_trainer/): "
              "ask the workload's engine instead:")


def _check(found: dict[tuple, str], allowed: set[tuple], rule: str) -> None:
    """Fail on what is found and not allowed; print what is allowed today (pytest -s)."""
    tolerated = sorted(k for k in found if k in allowed)
    if tolerated:
        print(f"\n{rule}\n{len(tolerated)} allowed (ALLOWED):")
        for k in tolerated:
            print(f"  {k}: {found[k]}")
    new = sorted(k for k in found if k not in allowed)
    assert not new, f"{rule}\n" + "\n".join(f"  {found[k]}" for k in new)


def _gather(items, key, show) -> dict[tuple, str]:
    """One finding per key, naming every place it occurs."""
    found: dict[tuple, list[str]] = {}
    for item in items:
        found.setdefault(key(item), []).append(show(item))
    return {k: "; ".join(v) for k, v in found.items()}


def cycle_findings(edges: list[Edge]) -> dict[tuple, str]:
    """Tangles through module-level imports, then those that only function-local imports close
    (a local import that dodges a cycle at import time is still a cycle). Key: the sorted
    modules of the tangle, so a module that joins an allowed one is reported."""
    module_level = find_cycles([e for e in edges if not e.local])
    found = {tuple(sorted(comp)): show_cycle(c) for comp, c in module_level}
    for comp, c in find_cycles(edges, known=tuple(comp for comp, _ in module_level)):
        found[tuple(sorted(comp))] = "closed by a local import: " + show_cycle(c)
    return found


def layering_findings(edges: list[Edge]) -> dict[tuple, str]:
    found = {}
    for rule, es in layering_violations(edges).items():
        found.update(_gather(es, lambda e: (e.src, e.dst),
                             lambda e, rule=rule: f"{e.where}: {e.src} imports {e.dst} [{rule}]"))
    return found


def local_findings(edges: list[Edge]) -> dict[tuple, str]:
    return _gather(local_imports(edges), lambda e: (e.src, e.dst),
                   lambda e: f"{e.where}: {e.src} imports {e.dst} inside a function")


def mode_findings(root: Path) -> dict[tuple, str]:
    return _gather(mode_compares(root), lambda m: (m.module, m.word),
                   lambda m: f"{m.where}: {m.module} compares {m.word!r}")


def test_no_import_cycles():
    _check(cycle_findings(EDGES), ALLOWED_TODAY_CYCLES, RULE_CYCLES)


def test_layering():
    _check(layering_findings(EDGES), ALLOWED_TODAY_LAYERING, RULE_LAYERING)


def test_function_local_imports_only_for_heavy_extras():
    _check(local_findings(EDGES), ALLOWED_TODAY_LOCAL, RULE_LOCAL)


# What `vramplan fit` loads for every model: the derived layers are assembled from the disk cache
# by these without torch; only derive's meta/kv/extract/oracle import it (inside functions).
LIGHT = ("vramplan.loading", "vramplan.derive", "vramplan.derive.assemble", "vramplan.derive.cache")


def test_the_light_part_of_derive_imports_nothing_heavy():
    heavy = heavy_modules(EDGES)
    assert not [m for m in LIGHT if m in heavy], sorted(m for m in LIGHT if m in heavy)
    assert "vramplan.derive.meta" in heavy and "vramplan.derive.kv" in heavy     # the check can fail


def test_mode_strings_stay_at_the_edge():
    _check(mode_findings(ROOT), ALLOWED_TODAY_MODES, RULE_MODES)


@pytest.mark.parametrize("allowed, findings", [
    (ALLOWED_TODAY_CYCLES, lambda: cycle_findings(EDGES)),
    (ALLOWED_TODAY_LAYERING, lambda: layering_findings(EDGES)),
    (ALLOWED_TODAY_LOCAL, lambda: local_findings(EDGES)),
    (ALLOWED_TODAY_MODES, lambda: mode_findings(ROOT)),
], ids=["cycles", "layering", "local", "modes"])
def test_allowed_today_is_not_stale(allowed, findings):
    """A fixed violation leaves ALLOWED_TODAY too, so the list only shrinks."""
    stale = sorted(allowed - set(findings()))
    assert not stale, f"no longer violated, delete from ALLOWED_TODAY: {stale}"


# -- the checker can fail ----------------------------------------------------------------------


def test_checker_reports_a_cycle_a_forbidden_import_a_local_import_and_a_mode(tmp_path):
    pkg = tmp_path / PACKAGE
    files = {
        "__init__.py": "",
        "errors.py": "",
        "memory/__init__.py": "",
        "memory/weights.py": "from vramplan.engines import vllm\n",        # forbidden
        "engines/__init__.py": "",
        "engines/vllm.py": "import vramplan.planner as p\n",
        "planner.py": "from vramplan import suggestions\n",                 # cycle ...
        "suggestions.py": "def f():\n    from vramplan.planner import build\n"
                          "    import torch\n",                             # ... closed locally
        "spec/__init__.py": "from . import model\n",
        "spec/model.py": "from ..errors import BadInput\nfrom vramplan.memory import weights\n",
        "cli/__init__.py": "from vramplan.api import plan\nfrom vramplan.planner import build\n",
        "api.py": "def plan(mode):\n    return mode == 'serve'\n",
        "planner2.py": "import vramplan.spec.model\nx = 1 if 'lora' in ('lora', 'x') else 2\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    edges = read_imports(tmp_path)

    assert {(e.src, e.dst) for e in edges} >= {
        ("vramplan.memory.weights", "vramplan.engines.vllm"),
        ("vramplan.spec", "vramplan.spec.model"),
        ("vramplan.spec.model", "vramplan.errors"),
        ("vramplan.suggestions", "torch"),
    }
    assert not cycle_findings([e for e in edges if not e.local])
    cycles = cycle_findings(edges)
    assert list(cycles) == [("vramplan.planner", "vramplan.suggestions")]
    assert "vramplan/suggestions.py:2, local" in next(iter(cycles.values()))
    with pytest.raises(AssertionError, match="closed by a local import"):
        _check(cycles, set(), RULE_CYCLES)

    layering = layering_findings(edges)
    assert set(layering) == {("vramplan.memory.weights", "vramplan.engines.vllm"),
                             ("vramplan.spec.model", "vramplan.memory.weights"),
                             ("vramplan.cli", "vramplan.planner")}
    assert "vramplan/memory/weights.py:1" in layering[("vramplan.memory.weights",
                                                       "vramplan.engines.vllm")]
    with pytest.raises(AssertionError, match="memory is pure formulas"):
        _check(layering, set(), RULE_LAYERING)
    _check(layering, set(layering), RULE_LAYERING)     # allowed today: passes

    assert set(local_findings(edges)) == {("vramplan.suggestions", "vramplan.planner")}
    assert set(mode_findings(tmp_path)) == {("vramplan.planner2", "lora")}   # api.py is the edge


def test_cycles_are_keyed_by_their_modules():
    def edge(src, dst, local=False):
        return Edge(f"vramplan.{src}", f"vramplan.{dst}", f"vramplan/{src}.py", 1, local)

    tangle = [edge("a", "b"), edge("b", "a")]
    assert list(cycle_findings(tangle)) == [("vramplan.a", "vramplan.b")]
    assert "vramplan/a.py:1" in cycle_findings(tangle)[("vramplan.a", "vramplan.b")]
    # a module that joins an allowed tangle, even through a local import, is a new finding
    joined = cycle_findings(tangle + [edge("b", "c"), edge("c", "a", local=True)])
    assert set(joined) == {("vramplan.a", "vramplan.b"), ("vramplan.a", "vramplan.b", "vramplan.c")}
    with pytest.raises(AssertionError, match="vramplan.c"):
        _check(joined, {("vramplan.a", "vramplan.b")}, RULE_CYCLES)
    shown = joined[("vramplan.a", "vramplan.b", "vramplan.c")]
    assert shown.startswith("closed by a local import: vramplan.c")
    assert not cycle_findings([edge("a", "b"), edge("b", "c")])
