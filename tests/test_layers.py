"""Straight layers: no import cycles; kernels below the plan; the plan below the stage runners.

The import graph is the static one of ``prunemem.codedeps`` (function-local imports included),
the same walk that gives each job its code deps.
"""

from __future__ import annotations

from prunemem.codedeps import closure, import_graph

# the kernels: masks, transforms, scoring and the readers they are built on
KERNELS = ["prune.magnitude", "prune.calibrated", "prune.ccds", "prune.targets", "prune.search", "prune.masks",
           "prune.methods", "prune.units", "prune.registry", "prune.localize", "compress.quantize", "compress.gptq", "compress.lowrank",
           "evaluate.memorization", "evaluate.mia", "evaluate.perplexity", "evaluate.stats", "blockwise",
           "data.sources", "data.mmap", "data.sampling", "data.windows", "data.layout", "downstream.local"]
# the stage runners and the tools above them
ABOVE_PLAN = ["prune.run", "compress.run", "evaluate.run", "downstream.run", "report.html", "report.tables", "cli",
              "audit", "dvcgen", "freshness", "resources"]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_among_package_files():
    assert _cycles(import_graph()) == []


def _files(module: str) -> set[str]:
    return {f.removeprefix("src/prunemem/") for f in closure(f"prunemem.{module}")}


def test_kernels_import_neither_the_plan_nor_a_stage_runner():
    above = {f"{m.replace('.', '/')}.py" for m in ["plan", *ABOVE_PLAN]}
    leaks = {kernel: sorted(_files(kernel) & above) for kernel in KERNELS}
    assert {k: v for k, v in leaks.items() if v} == {}


def test_the_plan_sits_below_every_stage_runner_and_loads_no_kernel():
    plan = _files("plan")
    assert plan <= {"__init__.py", "plan.py", "errors.py", "provenance.py", "codedeps.py", "prune/__init__.py",
                    "prune/registry.py", "prune/units.py", "data/__init__.py", "data/layout.py", "data/canaries.py",
                    "schemas/params.schema.yaml"}, sorted(plan)
    for runner in ["prune.run", "compress.run", "evaluate.run", "downstream.run", "report.html"]:
        assert "plan.py" in _files(runner), runner
