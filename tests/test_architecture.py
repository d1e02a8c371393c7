"""DESIGN.md's arrows, enforced: the package's imports (module level, inside functions, under
TYPE_CHECKING) have no cycle, and none of the arrows DESIGN forbids."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"engine": "int_engine", "kernels": "int_engine.kernels", "bench": "int_engine.bench"}
STEPS = {f"int_engine.{m}" for m in ("patches", "prompts", "mining", "masks", "fuse", "contrast", "concept")}
STEP_MAY_IMPORT = STEPS | {f"int_engine.{m}" for m in ("config", "io", "protocols", "errors")}
SERVING = ("fastapi", "starlette", "uvicorn", "ray")


def module_files() -> dict[str, Path]:
    """Every module of the package by its import name."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package, *parts))] = path
    return out


def imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, only under TYPE_CHECKING) for each import in ``path``: our modules by
    their full names (``from . import x`` names the submodule x, not the package), others by
    their top-level name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            typing_only.update(id(n) for n in ast.walk(node))
    here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [target]
        else:
            continue
        for target in targets:
            if not target.startswith("int_engine"):
                target = target.split(".")[0]
            else:  # int_engine.kernels.miner.TickMiner -> the longest module prefix
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
            if target != name:
                found.append((target, id(node) in typing_only))
    return found


def graph(runtime_only: bool) -> dict[str, set[str]]:
    modules = module_files()
    return {
        name: {t for t, typing in imports(name, path, modules) if not (runtime_only and typing)} for name, path in modules.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def forbidden(source: str, target: str) -> str | None:
    """Why DESIGN forbids ``source`` -> ``target``, or None."""
    if source in STEPS and under(target, "int_engine") and target not in STEP_MAY_IMPORT:
        return "a step imports more than the steps and the plain core (config, io, protocols, errors)"
    if source in STEPS and (
        under(target, "int_engine.backends", "int_engine.kernels", "int_engine.cli", "int_engine.bench", "int_engine.service")
        or target in {"int_engine.scheduler", "int_engine.executor", "int_engine.loop", "int_engine.core", "int_engine.pipeline"}
    ):
        return "a step imports a backend, a kernel, the scheduler, the CLI, bench or the service"
    if under(source, "int_engine.backends") and (
        target in STEPS or target in {"int_engine.pipeline", "int_engine.scheduler", "int_engine.executor", "int_engine.loop"}
    ):
        return "a backend imports a step, the pipeline or the scheduler"
    if target in {"int_engine.pipeline"} | set() and source in {"int_engine.scheduler", "int_engine.executor"}:
        return "the scheduler imports the pipeline"
    if source in {"int_engine.scheduler", "int_engine.executor"} and under(target, "int_engine.backends"):
        return "the scheduler imports a backend"
    core = not under(source, "int_engine.cli", "int_engine.service", "int_engine.bench")
    if core and (under(target, "int_engine.cli", "int_engine.bench", "int_engine.service") or target in SERVING):
        return "the engine core imports the CLI, bench, the service or a serving library"
    if under(source, "int_engine.kernels") and under(target, "int_engine") and not under(target, "int_engine.kernels"):
        if target != "int_engine.mining":
            return "kernels import more than mining (their fallback and reference)"
    if target == "tests" or target.startswith("tests."):
        return "the package imports the tests"
    return None


def test_the_walk_sees_the_real_imports():
    edges = graph(runtime_only=False)
    assert "int_engine.calls" in edges["int_engine.pipeline"] and "int_engine.mining" in edges["int_engine.kernels.miner"]
    assert "fastapi" in edges["int_engine.service.app"] and "int_engine.api" in edges["int_engine.cli.segment"]
    # a function-local import counts: load_models makes the Miner from the kernels
    assert "int_engine.kernels" in edges["int_engine.models.load"]


def test_no_import_cycle():
    assert cycles(graph(runtime_only=True)) == []


def test_no_forbidden_arrow():
    bad = [
        f"{source} -> {target}: {why}"
        for source, targets in graph(runtime_only=False).items()
        for target in sorted(targets)
        if (why := forbidden(source, target))
    ]
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize(
    "source, target",
    [
        ("int_engine.masks", "int_engine.backends.segment_sam"),
        ("int_engine.mining", "int_engine.kernels"),
        ("int_engine.backends.llava_image", "int_engine.patches"),
        ("int_engine.scheduler", "int_engine.pipeline"),
        ("int_engine.core", "ray"),
        ("int_engine.api", "fastapi"),
        ("int_engine.kernels.miner", "int_engine.config"),
        ("int_engine.fuse", "int_engine.trace"),
    ],
)
def test_the_rules_catch_each_arrow_design_forbids(source, target):
    assert forbidden(source, target) is not None


def test_no_function_in_engine_over_80_lines_no_file_over_400():
    long = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        if text.count("\n") > 400:
            long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == [], "\n".join(long)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
