"""The versions constraints.txt pins, for the tests that hold an installed library to its pin (the
private-name shims': backends/test_private_api_shims.py, service/test_ray_runtime.py)."""

import re
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def canonical(name: str) -> str:
    """A distribution's name as pip compares it: case, "-", "_" and "." alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(package: str) -> str:
    """The version constraints.txt pins for ``package``."""
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and canonical(name.strip()) == canonical(package):
            return version.strip()
    raise AssertionError(f"constraints.txt pins no {package}")
