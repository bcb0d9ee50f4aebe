"""Every file shapetrace writes goes through here: atomic writes of JSON and ``.npz``, and versioned JSON reads.

An atomic write goes to a temporary file beside the target and is renamed into place only when complete, so a
crash or a full disk never leaves a half-written ``manifest.json``, ``signatures.json`` or ``.npz`` behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import SignatureFileError, UnsafePathError

__all__ = ["FORMAT_VERSION", "inside", "atomic_write", "write_json", "read_json", "save_npz", "load_npz", "json_value"]

#: The version of ``signatures.json`` and ``manifest.json``; readers refuse newer files.
FORMAT_VERSION = 1


def inside(folder: str | os.PathLike, rel: str | os.PathLike, what: str = "a file", listing: str = "manifest.json"
           ) -> Path:
    """``folder / rel`` when that stays inside ``folder``; :class:`UnsafePathError` for an absolute name, a ``..``
    that climbs out, or a link inside the folder that points outside it (a tampered manifest is never followed)."""
    folder = Path(folder)
    if not isinstance(rel, (str, os.PathLike)):
        raise UnsafePathError(f"{folder / listing} names {what} as {rel!r:.60}, not a file name; refused: re-export "
                              f"into a new folder")
    rel_path = Path(rel)
    target = (folder / rel_path).resolve()
    if rel_path.is_absolute() or not target.is_relative_to(folder.resolve()):
        raise UnsafePathError(f"{folder / listing} names {what} {str(rel)!r} outside the export folder; "
                              f"refused (a manifest only names files inside its folder): re-export into a new folder")
    return folder / rel_path


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path`` and rename it into place when complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def json_value(v: Any) -> Any:
    """``v`` if JSON can hold it, else its ``repr`` (a constant argument of an exotic type)."""
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return repr(v)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, default=json_value)
    atomic_write(path, lambda f: f.write(text))


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` into an uncompressed ``.npz``, atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def read_json(path: Path, what: str) -> dict:
    """Read a versioned JSON file written by shapetrace, with errors that say what to do."""
    path = Path(path)
    if not path.exists():
        raise SignatureFileError(f"{path} not found: is this a folder written by shapetrace?")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SignatureFileError(f"{path} is not a readable {what} ({e}); re-create it") from e
    if not isinstance(data, dict) or "format_version" not in data:
        raise SignatureFileError(f"{path} is not a shapetrace {what} (no format_version)")
    version = data["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SignatureFileError(f"{path} has format_version {version!r}, newer than this shapetrace reads "
                                 f"({FORMAT_VERSION}); upgrade shapetrace")
    return data


def _check_sizes(path: Path, z: Any) -> None:
    """Every array's header read before its data: an object array (a pickle) or a shape claiming more bytes than
    the member holds (a tampered header: reading it would allocate the claimed size first) is a ``ValueError``."""
    for info in z.zip.infolist():
        with z.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            if dtype.hasobject:
                raise ValueError(f"{info.filename} holds Python objects (a pickle); refused")
            claimed = math.prod(shape) * dtype.itemsize
            if claimed > info.file_size:
                raise ValueError(f"{info.filename} claims shape {list(shape)} ({claimed:,} bytes) but holds "
                                 f"{info.file_size:,} bytes; refused, nothing allocated")


def load_npz(path: Path, what: str, error: type[Exception] = SignatureFileError) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file; a missing or unreadable file raises ``error`` naming ``what`` it is."""
    try:
        with np.load(path, allow_pickle=False) as z:  # never a pickle: an .npz from a folder is data, not code
            _check_sizes(path, z)
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise error(f"{path} not found ({what}); the export folder is incomplete: re-run export_all") from None
    except (OSError, ValueError, zlib.error) as e:
        raise error(f"{path} is not a readable .npz ({e}); re-run export_all") from e
