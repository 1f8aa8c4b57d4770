"""Which files of the package a stage's outputs depend on: the real import closure of its entry point.

    python -c "from prunemem.codedeps import closure; print(*closure('prunemem.prune.run'), sep='\\n')"

Code deps decide when an edit reruns a job (DVC ``deps:``, Snakemake ``input: code``), so they
must be what runs, not what a folder name suggests: Wanda's mask runs ``blockwise.py`` and
SparseGPT ``compress/gptq.py``. This walks the AST of each module, function-local imports
included (a lazy import still runs), plus every package ``__init__`` an import executes, and
adds the data files the code opens (``resources.files("prunemem").joinpath("<file>")`` and
module-level ``*_FILE = "<path under the package>"`` constants, e.g. the bundled corpus and the
params schema, and every file of a bundled ``resources/`` folder, e.g. the shipped checkpoint). Static and torch-free: ~50 ms for the whole package, cached per process.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "prunemem"
ROOT = Path(__file__).resolve().parent  # src/prunemem


def module_file(module: str) -> Path | None:
    """src/prunemem/a/b.py or src/prunemem/a/b/__init__.py for 'prunemem.a.b'; None outside the package."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = ROOT.joinpath(*module.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parents(module: str) -> list[str]:
    """'prunemem.a.b' -> ['prunemem', 'prunemem.a']: packages Python executes before the module."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@lru_cache(maxsize=None)
def _scan(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(package modules ``path`` imports, package data files it opens), from its AST."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    modules, data = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            modules.append(origin)
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            modules += [f"{origin}.{alias.name}" for alias in node.names if module_file(f"{origin}.{alias.name}")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value \
                and not node.value.startswith("/") and len(node.value) < 200 and "\n" not in node.value:
            if (ROOT / node.value).is_file():  # a file bundled with the package, named by its path in it
                data.append(node.value)
            elif node.value.startswith("resources/") and node.value.strip("/") != "resources" \
                    and (ROOT / node.value).is_dir():  # a bundled folder, e.g. the shipped checkpoint
                data += sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / node.value).rglob("*") if p.is_file())
    found = [m for m in dict.fromkeys(modules) if module_file(m) is not None]
    return tuple(found), tuple(dict.fromkeys(data))


@lru_cache(maxsize=None)
def closure(*entries: str) -> tuple[str, ...]:
    """Every package file (repo-relative, sorted) that running ``entries`` may execute or read."""
    todo = [m for entry in entries for m in (*_parents(entry), entry)]
    seen: dict[str, Path] = {}
    data: set[str] = set()
    while todo:
        module = todo.pop()
        path = module_file(module)
        if path is None or module in seen:
            continue
        seen[module] = path
        imported, files = _scan(path)
        data.update(files)
        for dep in imported:
            todo += [*_parents(dep), dep]
    repo = ROOT.parents[1]
    files = {p.relative_to(repo).as_posix() for p in seen.values()}
    files |= {(ROOT / d).relative_to(repo).as_posix() for d in data}
    return tuple(sorted(files))


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (function-local imports included), for the cycle test."""
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        graph[_module_name(path)] = set(_scan(path)[0]) - {_module_name(path)}
    return graph
