"""Shared fixtures. Nothing here reaches a network: the hub is switched off for the whole
session and every model comes from the tiny zoo built locally."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The whole tiny zoo, built once per session (or taken from $INT_ENGINE_TEST_ZOO)."""
    from int_engine.models.cache import ensure_tiny_zoo

    given = os.environ.get("INT_ENGINE_TEST_ZOO")
    return ensure_tiny_zoo(given or tmp_path_factory.mktemp("zoo") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_zoo):
    """role -> that role's folder in the session's tiny zoo (each builder's defaults: seed 0, scale
    "tiny"). Tests read these folders, never write them: a test that changes files copies them."""
    from int_engine.config import ROLES

    def path(role: str) -> Path:
        assert role in ROLES, f"no role {role!r} in the tiny zoo (roles: {', '.join(ROLES)})"
        return tiny_zoo / role

    return path
