"""Where ``export_all`` writes: a staging folder inside the export folder, moved into place only when the whole
export finished (:func:`staged`), so a failure leaves no half-written file and an earlier export intact, a kill at
any moment leaves a complete export (the earlier or the new one), two exports never interleave in one folder, and
a full disk is a :class:`~shapetrace.errors.DiskFullError` saying how much space the export needed (the staging
folder is inside ``out``, on its filesystem: the commit is a rename); and the progress bar over the graphs
(:func:`progress`)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import manifest as manifest_mod
from .._core.diskspace import tree_bytes
from .._core.files import write_json
from .._skeleton.describe import SKELETON_DIR
from ..errors import ExportError, ShapetraceError
from ..manifest import MANIFEST, Manifest
from . import space

__all__ = ["staged", "progress"]

STAGING_PREFIX = ".shapetrace-staging-"
KEEP_PREFIX = ".shapetrace-old-"
#: the keys whose string values are file names in the folder, in the skeleton's nodes and the GenAI note
_FILE_KEYS = frozenset({"dir", "weights"})


@contextlib.contextmanager
def staged(out: Path, overwrite: bool, needed: int = 0) -> Iterator[Path]:
    """A fresh staging folder inside ``out``: what the block writes there replaces ``out``'s export when the block
    ends normally (:func:`_commit`: at every instant the folder holds a complete export, the earlier one or the new
    one), and is removed when it raises. One export at a time per folder: a second one is refused while the first
    holds the folder's lock; what a killed export left (its staging folder) is removed first. A full disk (or
    quota) becomes a :class:`~shapetrace.errors.DiskFullError` naming the space needed (at least ``needed``, the
    caller's bound, or what was staged when it filled) and the space free, raised once the staging is gone."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; pass a directory path for the export")
    if (out / MANIFEST).exists() and not overwrite:
        raise ExportError(f"{out} already holds an export ({MANIFEST}); pass overwrite=True to replace it, "
                          f"or choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot write to {out}: {e.strerror or e}; choose a writable folder") from e
    with _exclusive(out):
        for left in out.glob(f"{STAGING_PREFIX}*"):  # a killed export's: never referenced by a manifest
            shutil.rmtree(left, ignore_errors=True)
        try:
            stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        except OSError as e:
            raise ExportError(f"cannot write to {out}: {e.strerror or e}; choose a writable folder") from e
        had_export = (out / MANIFEST).exists()
        committed = False
        try:
            yield stage
            _commit(stage, out)
            committed = True
        except OSError as e:
            if space.is_full_disk(e):
                raise _full(stage, out, e, needed, had_export) from e
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ExportError(f"cannot write to {out}: {e.strerror or e}; choose a writable folder") from e
            raise
        except ExportError as e:
            if space.is_full_disk(e):
                raise _full(stage, out, e, needed, had_export) from e
            raise
        finally:
            if not committed:
                shutil.rmtree(stage, ignore_errors=True)


def _full(stage: Path, out: Path, e: BaseException, needed: int, had_export: bool) -> ExportError:
    """The staging folder measured, then removed (so the free space reported is what the folder has without it),
    and the error that says how much the export needed."""
    written = tree_bytes(stage)
    shutil.rmtree(stage, ignore_errors=True)
    return space.full_error(out, e, written, needed, had_export)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold the OS lock of the folder ``out`` itself (``flock`` on its descriptor: no file is added, and the OS
    releases it if this process dies) for the export."""
    import fcntl

    try:
        fd = os.open(out, os.O_RDONLY)
    except OSError as e:
        raise ExportError(f"cannot write to {out}: {e.strerror or e}; choose a writable folder") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ExportError(f"another export_all is writing into {out} right now; wait for it to finish, or "
                              f"export into another folder") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def progress(names: Sequence[str], enabled: bool) -> Any:
    if not enabled:
        return names
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return names
    return tqdm(names, unit="graph", leave=True, bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]")


def _commit(stage: Path, out: Path) -> None:
    """Move the staged export into place so that a kill at any moment leaves a complete export in ``out``:

    1. the earlier export's files that a staged file or folder will replace are hard-linked into a keep folder
       (``.shapetrace-old-*``), and its manifest is rewritten, atomically, to name them there: the earlier export
       stays complete, wherever its files are;
    2. the staged files and folders move to their final names (no manifest names them yet);
    3. the new manifest replaces the earlier one (one atomic rename): from here on, the new export is the one;
    4. the keep folder and the earlier export's files the new one does not name are removed.
    """
    old: Manifest | None = None
    if (out / MANIFEST).exists():
        with contextlib.suppress(ShapetraceError):  # an unreadable old manifest owns no files we know of
            old = manifest_mod.read(out)
    incoming = {f.name for f in stage.iterdir() if f.name != MANIFEST}
    owned = _owned(old) if old is not None else set()
    replaced = sorted({f.split("/")[0] for f in owned} & incoming)
    keep = Path(tempfile.mkdtemp(prefix=KEEP_PREFIX, dir=out))
    switched = False
    try:
        if old is not None and replaced:
            for name in replaced:
                _link(out / name, keep / name)
            write_json(out / MANIFEST, _moved(old.to_json(), set(replaced), keep.name))
        for name in sorted(incoming):
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # linked into the keep folder above when the earlier export named it
            os.replace(stage / name, target)
        os.replace(stage / MANIFEST, out / MANIFEST)
        switched = True
        for f in owned:
            top = f.split("/")[0]
            if top not in incoming and not top.startswith(KEEP_PREFIX):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    os.unlink(out / f)
    finally:
        # the keep folders (this one, and a killed commit's) are named by no manifest once the new one is in place;
        # before that, the earlier export may live in them: they stay, and the next export removes them
        for left in [keep, *out.glob(f"{KEEP_PREFIX}*")] if switched else ([] if any(keep.iterdir()) else [keep]):
            shutil.rmtree(left, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)


def _owned(manifest: Manifest) -> set[str]:
    """Every file name (relative to the folder) the manifest names: graph files, skeleton and GenAI folders."""
    names = {f for g in manifest.graphs for f in g.file_names()}
    if manifest.skeleton and "root" in manifest.skeleton:
        names.add(SKELETON_DIR)
    if manifest.genai and manifest.genai.get("dir"):
        names.add(str(manifest.genai["dir"]))
    return names


def _link(src: Path, dst: Path) -> None:
    """``dst`` holding what ``src`` holds, by hard links (no copy; a copy where links are not possible)."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file)
    elif src.exists():
        _link_file(str(src), str(dst))


def _link_file(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _moved(data: Any, names: set[str], keep: str) -> Any:
    """The manifest's JSON with every file name under ``names`` (top level) prefixed by ``keep/``."""
    def move(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: move(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v, key) for v in value]
        if isinstance(value, str) and key in _FILE_KEYS and value.split("/")[0] in names:
            return f"{keep}/{value}"
        return value

    def files(value: Any) -> Any:
        if isinstance(value, list):
            return [files(v) for v in value]
        return f"{keep}/{value}" if isinstance(value, str) and value.split("/")[0] in names else value

    out = dict(data)
    out["graphs"] = [{**g, "files": {k: files(v) for k, v in (g.get("files") or {}).items()}}
                     for g in data.get("graphs", [])]
    for part in ("skeleton", "genai"):
        if isinstance(data.get(part), dict):
            out[part] = move(data[part])
    return out
