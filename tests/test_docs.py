"""docs/method.md names real code and real tests."""

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = re.compile(r"`([a-z_]+(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`")
TEST = re.compile(r"`(tests/[a-z_/]+\.py)(?:::([A-Za-z0-9_]+))?`")


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def _resolve(name: str) -> object:
    """``module.attr[.attr]`` under int_engine (``sam_decode`` lives in int_engine.backends)."""
    parts = name.split(".")
    for package in ("int_engine", "int_engine.backends"):
        for cut in range(len(parts), -1, -1):
            try:
                obj = importlib.import_module(".".join([package, *parts[:cut]]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
            if obj is not None:
                return obj
    raise AssertionError(f"docs/method.md cites `{name}`, which is not in int_engine")


def test_method_md_names_real_functions():
    text = (ROOT / "docs" / "method.md").read_text()
    scenarios = _defined(ROOT / "tests" / "scenarios.py")
    cited = set(CODE.findall(text))
    assert len(cited) > 20
    for name in sorted(cited):
        head, _, rest = name.partition(".")
        if name.rsplit(".", 1)[-1] in ("json", "md", "py", "png", "yaml"):
            continue  # a file name, not code
        if head == "scenarios":
            assert rest in scenarios, f"docs/method.md cites `{name}`, not a scenario in tests/scenarios.py"
        else:
            _resolve(name.removeprefix("int_engine."))
    for path, test in TEST.findall(text):
        assert (ROOT / path).is_file(), path
        if test:
            assert test in _defined(ROOT / path), f"docs/method.md cites {path}::{test}, which does not exist"
