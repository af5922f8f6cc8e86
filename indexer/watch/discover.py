"""Finding checkpoints in a registered folder, and deciding whether each one is complete. Plain file I/O.

Three kinds of source:

- ``checkpoint``: one checkpoint folder (``config.json`` and safetensors).
- ``trainer``: a ``transformers.Trainer`` output folder with ``checkpoint-N/`` sub-folders (and the final
  model at the top when ``save_model`` was called).
- ``hf_cache``: a model in the local Hugging Face cache, ``models--org--name/`` with ``snapshots/<sha>/``
  (files there are symlinks into ``blobs/``) and ``refs/<revision>`` naming the snapshots.

Trainer writes ``checkpoint-N/`` in place, so a watcher sees folders half written. A checkpoint is taken only
when it is *complete* (``incomplete`` returns no reason) and *stable* (the same fingerprint at two looks a
few seconds apart, and no file younger than the settle time).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from indexer.errors import CheckpointError
from indexer.model.checkpoint import SHARD_INDEX, SINGLE_FILE, folder_step, name_step, open_checkpoint
from schema.errors import LensdbError

SourceKind = Literal["checkpoint", "trainer", "hf_cache"]
KINDS: tuple[SourceKind, ...] = ("checkpoint", "trainer", "hf_cache")
TRAINER_STATE = "trainer_state.json"

Fingerprint = tuple[tuple[str, int, int], ...]


class SourceError(LensdbError):
    """A registered folder cannot be read as the kind of source it was registered as."""


@dataclass(frozen=True)
class Candidate:
    """A checkpoint folder found in a source, with the label and step it will be indexed under."""

    path: Path
    label: str
    step: int | None


def _checkpoint_dirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and d.name.startswith("checkpoint-")
            and name_step(d.name) is not None]


def detect_kind(folder: Path) -> SourceKind:
    """What a folder is: an HF cache entry, a Trainer output folder, or one checkpoint.

    An empty folder is taken as a Trainer output folder whose run has not saved yet.
    """
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such folder. Pass a checkpoint folder, a Trainer output folder "
                          "(with checkpoint-N/ inside) or a Hugging Face cache entry (models--org--name).")
    if (folder / "snapshots").is_dir():
        return "hf_cache"
    if _checkpoint_dirs(folder) or not any(folder.iterdir()):
        return "trainer"
    if (folder / "config.json").exists():
        return "checkpoint"
    raise SourceError(f"{folder}: neither a checkpoint folder (no config.json), a Trainer output folder (no "
                      "checkpoint-N/ folders) nor a Hugging Face cache entry (no snapshots/). Pass one of those.")


def _cache_refs(folder: Path) -> dict[str, list[str]]:
    """Revision names per snapshot sha, from ``refs/`` (``refs/main``, ``refs/step1000``, ``refs/pr/1``)."""
    names: dict[str, list[str]] = {}
    refs = folder / "refs"
    if refs.is_dir():
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            sha = ref.read_text().strip()
            names.setdefault(sha, []).append(ref.relative_to(refs).as_posix())
    return names


def candidates(folder: Path, kind: SourceKind) -> list[Candidate]:
    """Every checkpoint folder a source holds now, oldest step first."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: the registered folder is gone; register the model again where it now is.")
    if kind == "checkpoint":
        found = [Candidate(folder, folder.name, folder_step(folder))]
    elif kind == "trainer":
        found = [Candidate(d, d.name, folder_step(d)) for d in _checkpoint_dirs(folder)]
        if (folder / "config.json").exists():
            found.append(Candidate(folder, folder.name, folder_step(folder)))
    else:
        refs = _cache_refs(folder)
        snaps = folder / "snapshots"
        found = []
        for snap in sorted(d for d in snaps.iterdir() if d.is_dir()) if snaps.is_dir() else []:
            names = refs.get(snap.name, [])
            stepped = [n for n in names if name_step(n.rsplit("/", 1)[-1]) is not None]
            label = (stepped or names or [snap.name[:12]])[0]
            step = name_step(label.rsplit("/", 1)[-1])
            found.append(Candidate(snap, label, step if step is not None else folder_step(snap)))
    return sorted(found, key=lambda c: (c.step is None, c.step or 0, c.label))


def fingerprint(folder: Path) -> Fingerprint:
    """(name, size, mtime) of every file in the folder, following symlinks (HF cache blobs)."""
    out = []
    for p in sorted(folder.iterdir()):
        try:
            st = p.stat()
        except FileNotFoundError:  # a dangling symlink or a file removed while we look
            out.append((p.name, -1, -1))
            continue
        if p.is_file():
            out.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def incomplete(c: Candidate, kind: SourceKind, settle_s: float, now: float | None = None) -> str | None:
    """Why a checkpoint folder cannot be indexed yet, or None when it looks complete and settled."""
    p = c.path
    if not p.is_dir():
        return "folder disappeared"
    if not (p / "config.json").exists():
        return "config.json missing (the checkpoint is still being written)"
    if kind == "trainer" and p.name.startswith("checkpoint-") and not (p / TRAINER_STATE).exists():
        return f"{TRAINER_STATE} missing (Trainer writes it last, so the checkpoint is still being written)"
    if not (p / SINGLE_FILE).exists() and not (p / SHARD_INDEX).exists():
        if any(p.glob("*.safetensors")):
            return f"shards present but {SHARD_INDEX} not written yet"
        return f"no {SINGLE_FILE} yet"
    prints = fingerprint(p)
    if any(size < 0 for _, size, _ in prints):
        return "a file is a dangling link (the download is incomplete)"
    newest = max((mtime for _, _, mtime in prints), default=0) / 1e9
    age = (time.time() if now is None else now) - newest
    if age < settle_s:
        return f"files modified {max(age, 0):.0f}s ago; waiting until they are {settle_s:g}s old"
    try:
        open_checkpoint(p)
    except CheckpointError as err:
        return str(err)
    return None


def changed(before: Fingerprint, after: Fingerprint, gap_s: float) -> str | None:
    """Why two looks at a folder disagree, or None when it did not change between them."""
    if before == after:
        return None
    a, b = dict((n, (s, m)) for n, s, m in before), dict((n, (s, m)) for n, s, m in after)
    names = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
    return f"files changed between two looks {gap_s:g}s apart ({', '.join(names[:3])}); still being written"
