"""Deploy from the export folder alone: :func:`load_pipeline` rebuilds the exported object from its skeleton,
every exported module on torch's ``meta`` device (no storage), and serves it like :func:`~shapetrace.load`.

::

    pipe = shapetrace.load_pipeline("out/", backend="openvino")   # the original class, every graph served
    image = pipe("another prompt", pose).images[0]
    print(shapetrace.runtime_of(pipe).summary())                 # what ran where
    shapetrace.runtime_of(pipe).close()                          # free the compiled models

The process never loads a PyTorch weight of an exported module: the graphs are the weights. A module the export
has no graph for runs in PyTorch on the weights the skeleton saved for it (docs/deploy.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import manifest as manifest_mod
from .._skeleton.rebuild import rebuild as rebuild_skeleton
from ..errors import SkeletonError
from .runtime import Runtime, load

__all__ = ["load_pipeline", "rebuild", "runtime_of", "RUNTIME_ATTRIBUTE"]

#: the attribute of a rebuilt object that holds its :class:`~shapetrace.Runtime` (read it with :func:`runtime_of`)
RUNTIME_ATTRIBUTE = "_shapetrace_runtime"


def load_pipeline(out_dir: str | Path, *, backend: str = "openvino", **options: Any) -> Any:
    """Rebuild the object exported into ``out_dir`` and serve every graph on ``backend``; returns the object.

    ``options`` are :func:`shapetrace.load`'s (``device``, ``precision``, ``static_shapes``, ``threads``,
    ``streams``, ``config``, ``graphs``, ``strict``, ``stateful``, ``cache_dir``). The object's class is the
    original one; its runtime is :func:`runtime_of` ``(obj)``.

    Raises :class:`~shapetrace.SkeletonError` for a folder without a skeleton (an export older than this feature,
    or an object whose skeleton could not be written: the message says which part and why) and for a class that is
    not installed here; :class:`~shapetrace.RuntimeMismatchError` as :func:`~shapetrace.load` does, and for a
    module with neither a graph nor weights.
    """
    out = Path(out_dir)
    obj = rebuild(out)
    runtime = load(obj, out, backend=backend, **options)
    try:
        object.__setattr__(obj, RUNTIME_ATTRIBUTE, runtime)
    except (AttributeError, TypeError):  # a dict root: runtime_of() says to use rebuild() + load() instead
        pass
    return obj


def rebuild(out_dir: str | Path) -> Any:
    """The object exported into ``out_dir``, rebuilt from its skeleton without loading anything: every exported
    module on the meta device (what :func:`load_pipeline` serves; pass it to :func:`~shapetrace.load` yourself
    for full control). Raises :class:`~shapetrace.SkeletonError` as :func:`load_pipeline` says."""
    out = Path(out_dir)
    manifest = manifest_mod.read(out)
    skeleton = manifest.skeleton
    if skeleton is None:
        raise SkeletonError(f"{out} holds no skeleton of the object (exported by shapetrace "
                            f"{manifest.shapetrace_version or 'before 0.2'}): export it again with this version to "
                            f"deploy it with load_pipeline, or build the object yourself (weights on the meta device "
                            f"will do) and call load(obj, {str(out)!r})")
    if "error" in skeleton:
        raise SkeletonError(f"the export in {out} could not write the object's skeleton ({skeleton['error']}); build "
                            f"the object yourself (weights on the meta device will do) and call load(obj, "
                            f"{str(out)!r})")
    return rebuild_skeleton(skeleton, out)


def runtime_of(obj: Any) -> Runtime:
    """The :class:`~shapetrace.Runtime` serving an object made by :func:`load_pipeline` (``summary()``,
    ``stats()``, ``close()``)."""
    runtime = getattr(obj, RUNTIME_ATTRIBUTE, None)
    if not isinstance(runtime, Runtime):
        raise SkeletonError(f"this {type(obj).__name__} was not made by shapetrace.load_pipeline, or cannot hold an "
                            f"attribute (a dict): the runtime of load(obj, out) is what load returned "
                            f"(obj = shapetrace.rebuild(out); runtime = shapetrace.load(obj, out))")
    return runtime
