"""Hugging Face hub ids resolved through the local cache only: ``EleutherAI/pythia-70m`` (and a revision: a
branch or tag name, a commit sha or its prefix) → the cached snapshot folder. Nothing is downloaded, ever: an
id that is not cached is an error that says how to download it. Plain file I/O over the cache layout
(``models--org--name/refs/<revision>`` holds a commit sha, ``snapshots/<sha>/`` the files).
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from schema.errors import LensdbError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_SHA = re.compile(r"^[0-9a-f]{7,40}$")


@dataclass(frozen=True)
class CachedSnapshot:
    repo_id: str
    revision: str  # what was asked for (``main`` by default)
    sha: str
    path: Path


def cache_dir() -> Path:
    """The hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (as
    huggingface_hub resolves it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and ".." not in text


def resolve_cached(repo_id: str, revision: str | None = None, cache: Path | None = None) -> CachedSnapshot:
    """The cached snapshot of ``repo_id`` at ``revision`` (default ``main``); a clear error if it is not cached."""
    cache = cache or cache_dir()
    wanted = revision or "main"
    how = (f"lensdb never downloads: fetch it first with `hf download {repo_id}"
           f"{'' if revision is None else f' --revision {revision}'}` (huggingface_hub), or pass a local folder")
    if not looks_like_repo_id(repo_id):
        raise LensdbError(f"{repo_id!r} is neither an existing file or folder nor a Hugging Face model id.")
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    if not folder.is_dir():
        raise LensdbError(f"{repo_id!r} is not a local folder and is not in the Hugging Face cache at {cache}; "
                          f"{how}.")
    snaps = folder / "snapshots"
    ref = folder / "refs" / wanted
    sha: str | None = None
    if ref.is_file() and ref.resolve().is_relative_to(folder.resolve()):
        sha = ref.read_text().strip()
    elif _SHA.match(wanted) and snaps.is_dir():
        found = sorted(d.name for d in snaps.iterdir() if d.is_dir() and d.name.startswith(wanted))
        sha = found[0] if len(found) == 1 else None
    if sha is None or not (snaps / sha).is_dir():
        refs = sorted(p.relative_to(folder / "refs").as_posix() for p in (folder / "refs").rglob("*") if p.is_file()) \
            if (folder / "refs").is_dir() else []
        have = ", ".join(refs) or "none"
        raise LensdbError(f"revision {wanted!r} of {repo_id!r} is not in the Hugging Face cache at {cache} "
                          f"(cached revisions: {have}); {how}.")
    return CachedSnapshot(repo_id, wanted, sha, snaps / sha)
