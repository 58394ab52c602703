"""A content-addressed cache of trained weights, safe against killed runs and concurrent jobs.

An entry is a folder ``<root>/<key>/`` holding ``weights.pt`` (a plain state dict, loaded with
``weights_only=True``) and ``meta.json``. Entries are written into a temporary folder and renamed
into place, so a folder under its final name is always complete; a killed run leaves at most a
``.tmp-*`` folder that nothing reads. A per-key file lock makes concurrent jobs that need the same
model train it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def cache_key(spec: dict[str, Any]) -> str:
    """A stable hash of everything that affects training (JSON with sorted keys)."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def load_weights(path: Path, net: nn.Module, expected: str) -> None:
    """Load a state dict safely into ``net``; a mismatch is an error that says what was expected."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated files, pickled payloads, foreign formats
        raise ValueError(f"cannot load checkpoint {path} safely (weights only): {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds {type(state).__name__}, expected a state dict")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match {expected}: {err}") from err


class ModelCache:
    """Trained weights by key under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on ``key`` (released when the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, key: str, net: nn.Module, expected: str) -> dict[str, Any] | None:
        """Fill ``net`` from the entry ``key`` and return its metadata, or None when absent."""
        folder = self.entry(key)
        if not (folder / "meta.json").is_file():
            return None
        load_weights(folder / "weights.pt", net, expected)
        return json.loads((folder / "meta.json").read_text())

    def store(self, key: str, net: nn.Module, meta: dict[str, Any]) -> Path:
        """Write the entry for ``key`` atomically and return its folder."""
        final = self.entry(key)
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        torch.save(net.state_dict(), tmp / "weights.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        try:
            os.rename(tmp, final)
        except OSError:  # another job stored the same key first; its entry is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
        return final
