"""Where ``export_all`` writes: a staging folder inside the export folder, moved into place only when the whole
export finished (:func:`staged`), so a failure leaves no half-written file and an earlier export intact; and the
progress bar over the graphs (:func:`progress`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import manifest as manifest_mod
from ..errors import ExportError, ShapetraceError
from ..manifest import MANIFEST

__all__ = ["staged", "progress"]


@contextlib.contextmanager
def staged(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh staging folder inside ``out``: what the block writes there replaces ``out``'s export when the block
    ends normally (files of an earlier export go first, the manifest last), and is removed when it raises."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; pass a directory path for the export")
    if (out / MANIFEST).exists() and not overwrite:
        raise ExportError(f"{out} already holds an export ({MANIFEST}); pass overwrite=True to replace it, "
                          f"or choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".shapetrace-staging-", dir=out))
    except OSError as e:
        raise ExportError(f"cannot write to {out}: {e.strerror or e}; choose a writable folder") from e
    committed = False
    try:
        yield stage
        _commit(stage, out)
        committed = True
    finally:
        if not committed:
            shutil.rmtree(stage, ignore_errors=True)


def progress(names: Sequence[str], enabled: bool) -> Any:
    if not enabled:
        return names
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return names
    return tqdm(names, unit="graph", leave=True, bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]")


def _commit(stage: Path, out: Path) -> None:
    """Move the staged files to their final names; files of an earlier export go first, the manifest last."""
    old_manifest = out / MANIFEST
    old_files: set[str] = set()
    if old_manifest.exists():
        with contextlib.suppress(ShapetraceError):  # an unreadable old manifest owns no files we know of
            old_files = {f for g in manifest_mod.read(out).graphs for f in g.file_names()}
    trash = Path(tempfile.mkdtemp(prefix=".shapetrace-old-", dir=out))
    try:
        with contextlib.suppress(FileNotFoundError):
            os.replace(old_manifest, trash / MANIFEST)  # no manifest: the folder is not a complete export meanwhile
        for f in old_files:
            if (out / f).exists() and "/" not in f:
                os.replace(out / f, trash / f)
        for f in sorted(stage.iterdir()):
            if f.is_dir() and (out / f.name).is_dir():  # a folder of the earlier export (skeleton/) is replaced whole
                os.replace(out / f.name, trash / f.name)
            if f.name != MANIFEST:
                os.replace(f, out / f.name)
        os.replace(stage / MANIFEST, out / MANIFEST)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
