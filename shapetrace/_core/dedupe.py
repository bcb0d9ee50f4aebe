"""Files with the same bytes stored once: :func:`link_identical` hard-links, inside one folder, every large file
whose content equals another's to that one. A decoder's prompt and step variants hold the same weights in the
same order, so their IR ``.bin`` files (and their ONNX external data) are byte-identical: one copy on disk serves
both, under both names. Every name stays a plain file; a reader sees no difference."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

__all__ = ["MIN_BYTES", "link_identical"]

#: files below this are left alone (hashing them saves nothing worth a link)
MIN_BYTES = 1 << 16


def link_identical(folder: Path, min_bytes: int = MIN_BYTES) -> int:
    """Hard-link every file under ``folder`` of at least ``min_bytes`` whose bytes equal an earlier one's (same
    size and 256-bit BLAKE2 digest) to that one; returns the bytes saved. A file system without hard links saves
    nothing and changes nothing."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        size = path.stat().st_size
        if size >= min_bytes:
            by_size[size].append(path)
    saved = 0
    for size, paths in by_size.items():
        if len(paths) < 2:
            continue
        first_of: dict[str, Path] = {}
        for path in paths:
            digest = _digest(path)
            first = first_of.setdefault(digest, path)
            if first is path or os.path.samefile(first, path):
                continue
            tmp = path.with_name(path.name + ".link")
            try:
                os.link(first, tmp)
                os.replace(tmp, path)
            except OSError:
                tmp.unlink(missing_ok=True)
                continue
            saved += size
    return saved


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()

