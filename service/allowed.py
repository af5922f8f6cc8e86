"""Which server paths a request may name: only what the operator configured.

A request (``POST /index``, ``POST /sources``, a ``pair_vocab`` file) may name a path on the server only inside
an ``--allow-dir`` folder or, for checkpoints, inside a registered model's folder (the operator registered it
with ``lensdb register``, or a request did, inside an allowed folder). Paths are resolved first (symbolic links
followed, ``..`` folded), and every file directly in a checkpoint folder must resolve inside the same roots, so
a symlinked shard cannot reach out of them. A path outside is a 403 problem that says nothing about what
exists there.
"""

import os
from collections.abc import Iterable
from pathlib import Path

from schema.errors import LensdbError


class Forbidden(LensdbError):
    """The request names a path outside the folders this service may read."""


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def resolved(text: str, what: str) -> Path:
    """``text`` as an absolute path with links followed (the file need not exist)."""
    if not isinstance(text, str) or not text or "\x00" in text:
        raise LensdbError(f"{what}: send an absolute path on the server.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LensdbError(f"{what}: the path is not valid Unicode text.") from None
    path = Path(text)
    if not path.is_absolute():
        raise LensdbError(f"{what}: send an absolute path on the server, not {text!r}.")
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        raise Forbidden(f"{what}: {text} is not inside a folder this service may read.") from None


def permit(text: str, roots: Iterable[Path], what: str, folder: bool = True) -> Path:
    """The resolved path ``text`` names, if it lies inside ``roots`` (and, for a folder, so does every file
    directly in it); else ``Forbidden`` naming the setting that would allow it."""
    roots = [Path(os.path.realpath(r)) for r in roots]
    path = resolved(text, what)
    refusal = Forbidden(f"{what}: {text} is not inside a folder this service may read; the operator allows "
                        "folders with `lensdb serve --allow-dir DIR` (or registers a model's folder with "
                        "`lensdb register`).")
    if not roots or not _inside(path, roots):
        raise refusal
    if folder and path.is_dir():
        try:
            entries = list(path.iterdir())
        except OSError:
            entries = []
        for entry in entries:
            if not _inside(Path(os.path.realpath(entry)), roots):
                raise Forbidden(f"{what}: {entry.name} in {text} links outside the folders this service may "
                                "read; copy the file in instead.")
    return path
