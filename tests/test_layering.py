"""The import graph of dsa, read from the source (function-level imports included): no circles, no import from
a lower layer to a higher one, roofline/ standalone, and typer/rich only in the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lowest first: a module may import modules of its own layer or below, never above
LAYERS: list[set[str]] = [
    {"dsa.errors", "dsa._version", "dsa.io", "dsa.testing", "dsa.vocab"},
    {"dsa.ir"},  # the analysed network as plain data
    {"dsa.formats", "dsa.formats.plan", "dsa.formats.profile", "dsa.formats.importance", "dsa.formats.segment_table"},
    {"dsa.checkpoints"},
    {"dsa.models", "dsa.data"},
    {"dsa.graph"},  # torch.fx analysis
    {"dsa.cache"},
    {"dsa.transform", "dsa.transform.layers", "dsa.transform.merge"},
    {"dsa.networks"},
    {"dsa.export"},
    {"dsa.quantize"},  # INT8 with the runtimes' own tooling
    {"dsa.latency", "dsa.latency.ops", "dsa.latency.measured"},
    {"dsa.latency.costs"},
    {"dsa.latency.evaluate"},
    {"dsa.latency.resolve"},
    {"dsa.latency.table_scores"},  # a cost model scored against a measured table
    {"dsa.planner.candidates", "dsa.planner.solver", "dsa.planner.dp"},
    {"dsa.planner.planner"},
    {"dsa.planner.pareto"},
    {"dsa.planner.plot"},
    {"dsa.planner"},  # its lazy re-exports
    {"dsa.measure.runtimes"},  # measure
    {"dsa.measure", "dsa.measure.timing"},
    {"dsa.measure.profiler"},
    {"dsa.measure.runtime_profile", "dsa.measure.table_import"},
    {"dsa.measure.calibrate"},
    {"dsa.train.config", "dsa.train.distributed", "dsa.train.losses"},
    {"dsa.train.evaluate"},
    {"dsa.train.loop"},
    {"dsa.train"},
    {"dsa.importance"},
    {"dsa.commands._common"},  # the CLI: command groups on shared options
    {
        "dsa.commands.latency",
        "dsa.commands.measuring",
        "dsa.commands.merging",
        "dsa.commands.network",
        "dsa.commands.planning",
        "dsa.commands.quantizing",
        "dsa.commands.training",
    },
    {"dsa.commands"},
    {"dsa", "cli"},  # the package's re-exports and the command line
]

# modules that never import torch (a cached analysis is planned and priced without it)
TORCH_FREE = (
    "dsa._version",
    "dsa.ir",
    "dsa.formats",
    "dsa.latency",
    "dsa.planner",
    "dsa.cache",
    "dsa.io",
    "dsa.vocab",
    "dsa.errors",
)


def _modules() -> dict[str, Path]:
    out = {"cli": ROOT / "cli.py"}
    for pkg in ("dsa", "roofline"):
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for m, p in mods.items():
        found = _imports(p)
        graph[m] = {t for t in found if t in mods and t != m and t not in ("dsa", "roofline")} | {
            f"ext:{t.split('.')[0]}" for t in found if t.split(".")[0] not in ("dsa", "roofline", "cli")
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    return [
        f"{m} -> {t}" for m, targets in graph.items() for t in targets if m in rank and t in rank and rank[t] > rank[m]
    ]


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    graph = import_graph()
    assert back_edges(graph) == []
    unplaced = sorted(m for m in graph if m.startswith("dsa") and not any(m in layer for layer in LAYERS))
    assert unplaced == [], f"place new modules in LAYERS: {unplaced}"


def test_the_planning_path_never_imports_torch() -> None:
    import subprocess
    import sys

    graph = import_graph()
    free = sorted(m for m in graph if m.startswith(TORCH_FREE))
    for m in free:  # no edge out of the torch-free modules, function-level imports included
        assert not {t for t in graph[m] if t.startswith("dsa") and not t.startswith(TORCH_FREE)}, m
        if m != "dsa.io":  # dsa.io's torch readers import torch inside them, for their torch-only callers
            assert not graph[m] & {"ext:torch", "ext:torchvision", "ext:timm"}, m
    heavy = "{'torch', 'torchvision', 'timm'}"
    code = f"import sys\nfor m in {free!r}:\n    __import__(m)\nprint(sorted(set(sys.modules) & {heavy}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_formats_and_latency_never_reach_up() -> None:
    graph = import_graph()
    for m, targets in graph.items():
        if m.startswith(("dsa.formats", "dsa.latency")):
            assert not {t for t in targets if t.startswith(("dsa.planner", "dsa.measure", "dsa.train"))}, m


def test_roofline_is_standalone_and_only_the_cli_uses_typer_and_rich() -> None:
    graph = import_graph()
    for m, targets in graph.items():
        if m.startswith("roofline"):
            assert not {t for t in targets if t.startswith("dsa") or t == "cli"}, m
        if m != "cli" and not m.startswith("dsa.commands"):
            assert not targets & {"ext:typer", "ext:rich", "ext:click"}, m


@pytest.mark.parametrize(
    ("edges", "expect_cycle", "expect_back"),
    [
        ({"dsa.graph": {"dsa.formats.plan"}, "dsa.formats.plan": {"dsa.graph"}}, True, True),
        ({"dsa.latency.costs": {"dsa.planner.planner"}}, False, True),
        ({"dsa.planner.planner": {"dsa.latency.costs"}}, False, False),
    ],
)
def test_the_checks_catch_a_circle_and_a_back_edge(edges, expect_cycle, expect_back) -> None:
    assert bool(cycles(edges)) is expect_cycle
    assert bool(back_edges(edges)) is expect_back


@pytest.mark.parametrize("command", ["--help", "models"])
def test_help_and_models_import_no_solver_plotting_onnx_or_timm(command) -> None:
    import subprocess
    import sys

    code = (
        f"import sys; sys.argv = ['dsa', {command!r}]\n"
        "from cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('scipy', 'matplotlib', 'onnx', 'onnxruntime', 'timm') if m in sys.modules]\n"
        "print('HEAVY', ','.join(heavy), file=sys.stderr)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stderr.strip().splitlines()[-1] == "HEAVY", r.stderr


def test_the_vocabulary_is_roofline_s() -> None:
    import roofline as rl
    from dsa.vocab import PRECISION_BYTES, PRECISIONS

    assert tuple(rl.PRECISIONS) == PRECISIONS and set(PRECISION_BYTES) == set(PRECISIONS)


def test_library_code_never_prints_or_exits() -> None:
    """Only the CLI (cli.py, dsa.commands) prints or exits; the library raises DsaError and returns data."""
    offenders = []
    for m, path in _modules().items():
        if m == "cli" or m.startswith("dsa.commands"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = (
                    f.id
                    if isinstance(f, ast.Name)
                    else f"{getattr(f.value, 'id', '?')}.{f.attr}"
                    if isinstance(f, ast.Attribute)
                    else ""
                )
                if name in ("print", "exit", "quit", "sys.exit", "os._exit"):
                    offenders.append(f"{m}:{node.lineno} {name}")
    assert offenders == []


def test_op_vocabulary_is_defined_once() -> None:
    """The activations a plan may add are the ones apply_plan can build; gate types cost as activations."""
    from dsa.formats.plan import ADDABLE_ACTIVATIONS
    from dsa.ir import ACTIVATION_TYPES, GATE_TYPES
    from dsa.transform.merge import _ACT_FACTORY

    assert tuple(_ACT_FACTORY) == ADDABLE_ACTIVATIONS and set(ADDABLE_ACTIVATIONS) <= ACTIVATION_TYPES
    assert not ACTIVATION_TYPES & GATE_TYPES


def test_no_module_imports_the_package_root() -> None:
    """``from dsa import X`` hides which module X lives in (and loads the lazy re-exports): inside dsa and the
    CLI, import from the module that defines it (and inside roofline, from roofline's modules). No relative
    imports: the graph above reads absolute ones."""
    mods = _modules()
    offenders = []
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in ("dsa", "roofline"):
                names = [a.name for a in node.names if f"{node.module}.{a.name}" not in mods]  # not submodules
                if names and (node.module == "dsa" or m.startswith("roofline")):
                    offenders.append(f"{m}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                offenders.append(f"{m}:{node.lineno} (relative import)")
    assert offenders == []
