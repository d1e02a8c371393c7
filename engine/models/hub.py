"""Hugging Face repo ids as model paths, resolved from the local hub cache only.

A role's ``path`` may be ``org/name`` (or ``org/name@revision``): the snapshot directory of
that repo in the local Hugging Face cache, which then loads like any local directory. Nothing
is ever downloaded; a repo that is not cached is one line saying where we looked and which
command fills the cache on a machine with internet.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelLoadError
from ..log import get_logger

log = get_logger("models")

# ``org/name`` with the hub's characters (word chars, '-', '.'; no leading/trailing '-'/'.'),
# then an optional ``@revision`` (a branch, tag, commit or ``refs/pr/N``). A namespace is
# required: a bare ``name`` is far more likely a relative folder than a legacy hub id.
_PART = r"[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<rev>[\w./-]+))?")


def looks_like_repo_id(spec: str) -> bool:
    """Whether ``spec`` has the shape of ``org/name[@revision]`` (it says nothing about a
    local path of the same name: the caller prefers an existing local path)."""
    match = _REPO_ID.fullmatch(spec.strip())
    # '..' and '--' are reserved by the hub, and '..' would read as a parent folder.
    return match is not None and ".." not in match["repo"] and "--" not in match["repo"]


def split_revision(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); ``org/name`` -> (``org/name``, None)."""
    repo, _, rev = spec.strip().partition("@")
    return repo, rev or None


def hub_cache_dir() -> Path:
    """The hub cache directory, read from the environment now, with huggingface_hub's
    precedence: ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``.

    huggingface_hub reads these once, when it is imported (``constants.HF_HUB_CACHE``); reading
    them at call time instead means a cache set in this process (a test, an embedding service)
    is the one searched.
    """
    home = os.getenv("HF_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    home = os.path.expandvars(os.path.expanduser(home))
    cache = os.getenv("HF_HUB_CACHE") or os.getenv("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def download_command(repo_id: str, revision: str | None = None, cli: str = "hf") -> str:
    """The command that puts ``repo_id`` into the hub cache: ``hf download`` (huggingface_hub's
    CLI since 0.34) or, with ``cli="huggingface-cli"``, the older spelling of the same."""
    return f"{cli} download {repo_id}" + (f" --revision {revision}" if revision else "")


def resolve_repo(role: str, spec: str) -> Path:
    """The local snapshot directory of the repo ``spec`` (``org/name[@revision]``) in the hub
    cache, without any network access (``local_files_only``); raises ModelLoadError, one line
    naming the role, the repo, the cache searched and the command that would fill it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

    repo_id, revision = split_revision(spec)
    cache = hub_cache_dir()
    fill = (
        f"fill the cache on a machine with internet: `HF_HUB_CACHE={cache} {download_command(repo_id, revision)}` "
        f"(older huggingface_hub: `{download_command(repo_id, revision, 'huggingface-cli')}`) and copy it here"
    )
    try:
        snapshot = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
    except IncompleteSnapshotError as err:
        raise ModelLoadError(
            f"{role}: the cached snapshot of {spec} at {err.snapshot_path} is incomplete (files of its tree listing "
            f"are missing; offline, nothing is downloaded); {fill}"
        ) from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"{role}: {spec} is not a local path and not in the Hugging Face cache {cache} "
            f"(offline, nothing is downloaded); {fill}, or set models.{role}.path to a local directory"
        ) from None
    except HFValidationError as err:
        # looks_like_repo_id is looser than the hub's validator on rare names: say which rule.
        reason = str(err).replace("\n", " ")
        raise ModelLoadError(f"{role}: {spec} is not a local path and not a valid Hugging Face repo id: {reason}") from None
    log.debug("%s: %s resolved from the Hugging Face cache to %s", role, spec, snapshot)
    return Path(snapshot)
