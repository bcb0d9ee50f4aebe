"""The folder OpenVINO GenAI opens as it is: ``out/genai/`` for ``export_all(..., genai=True)``.

GenAI's C++ pipelines read one layout each, the one optimum-intel writes. One module per pipeline, each with a
``PIPELINE`` name, ``find(obj, rec, entries)`` (the graph the folder is written from, or :class:`NoGenaiPipeline`
saying what the object holds instead) and ``write(obj, target, folder)`` (the note's pipeline-specific part). The
first writer whose ``find`` succeeds writes the folder; none names an architecture.

:func:`write_genai` returns the manifest's ``genai`` note: ``{"pipeline": ..., "dir": "genai", "graph": ...,
...}``, or ``{"error": why}`` when the object is none GenAI has a pipeline for, or the folder could not be written.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from ..._core import diskspace
from ...manifest import GraphEntry
from . import llm, text2image, whisper
from .common import NoGenaiPipeline

__all__ = ["GENAI_DIR", "WRITERS", "write_genai"]

#: the folder, inside the export, that GenAI opens
GENAI_DIR = "genai"

#: one module per GenAI pipeline, tried in this order
WRITERS = (llm, whisper, text2image)


def write_genai(obj: Any, rec: Any, stage: Path, entries: Sequence[GraphEntry]) -> dict[str, Any]:
    """Write ``stage/genai/`` for the first pipeline GenAI has for the object; returns the manifest note
    (``{"error": why}`` when there is none, or when writing failed: the rest of the export goes on)."""
    why = []
    for writer in WRITERS:
        try:
            target = writer.find(obj, rec, entries)
        except NoGenaiPipeline as e:
            why.append(str(e))
            continue
        folder = stage / GENAI_DIR
        t0 = time.perf_counter()
        try:
            folder.mkdir(parents=True)
            note = writer.write(obj, target, folder)
        except Exception as e:  # noqa: BLE001 -- said in the manifest and a warning; the other graphs stay exported
            diskspace.raise_if_full(e, stage, f"the {GENAI_DIR}/ folder")  # a full disk stops the export
            shutil.rmtree(folder, ignore_errors=True)
            return {"error": f"{writer.PIPELINE} folder for graph {target.graph!r} ({type(target.module).__name__}) "
                             f"failed: {type(e).__name__}: {str(e)[:400]}"}
        note.setdefault("files", sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))
        return {"pipeline": writer.PIPELINE, "dir": GENAI_DIR, "graph": target.graph,
                "module": rec.graphs[target.graph].module_path, "module_class": type(target.module).__name__,
                **note, "seconds": round(time.perf_counter() - t0, 2)}
    kind = rec.object_class.rsplit(":", 1)[-1] or "object"
    return {"error": f"no GenAI pipeline for this {kind}: " + "; ".join(why)}
