"""Content-addressed artifact storage: a blob's name is the SHA-256 of its bytes.

The runtime puts the digest of what each model and tool step was given (the run's state as
JSON) in the step's provenance (`input_digests`) and stores large inputs here, so the exact
input of any step can be fetched later for audit, replay or an eval dataset, and identical
inputs are stored once. The
filesystem store is the default; a shared one (an object store) fits behind the same two calls.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Protocol

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def parse_digest(digest: str) -> str:
    """The hex part of `sha256:<64 lower-case hex>`; FileNotFoundError for anything else, so
    a digest from a caller (`../../etc/passwd`, padded to length) never becomes a path."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise FileNotFoundError(digest)
    return match.group(1)


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store `data`; its digest, `sha256:<hex>`."""
        ...

    def get(self, digest: str) -> bytes:
        """The bytes stored under `digest`; FileNotFoundError if none."""
        ...


class FileBlobStore:
    """Blobs as files `root/ab/cd/<hex>`, written atomically (temporary file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._folders: set[str] = set()
        self._temporary = f".tmp-{os.getpid()}-{threading.get_ident()}"

    def _path(self, hexdigest: str) -> Path:
        if _HEX_DIGEST.fullmatch(hexdigest) is None:  # never a path from anything else
            raise FileNotFoundError(hexdigest)
        return self.root / hexdigest[:2] / hexdigest[2:4] / hexdigest

    def put(self, data: bytes) -> str:
        hexdigest = hashlib.sha256(data).hexdigest()
        folder = os.path.join(self.root, hexdigest[:2], hexdigest[2:4])
        path = os.path.join(folder, hexdigest)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        elif os.path.exists(path):
            return f"sha256:{hexdigest}"
        temporary = f"{path}{self._temporary}"
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(handle, data)
        finally:
            os.close(handle)
        os.replace(temporary, path)  # readers see the whole blob or none
        return f"sha256:{hexdigest}"

    def get(self, digest: str) -> bytes:
        return self._path(parse_digest(digest)).read_bytes()
