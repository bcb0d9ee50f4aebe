"""A module's Python-level configuration as it was during a recorded call, put back while exporting and checking.

Some pipelines reconfigure their modules for the length of one call and restore them afterwards: a PAG pipeline
swaps the UNet's attention processors for perturbed-attention ones, then sets the originals back. Exported after
the call, the graph would compute the other attention: it would pass its checks (against the module as it is now)
and give other images inside the pipeline. The recorder keeps, at each graph's first call, the plain attributes
of the module and its submodules (:func:`snapshot`: the ``__dict__`` entries that are not tensors or private);
:func:`recorded_state` puts back those that changed since, for as long as an export and its checks run.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch

__all__ = ["snapshot", "recorded_state"]

_PLAIN = (int, float, str, bool, type(None))


def snapshot(module: torch.nn.Module) -> dict[tuple[str, str], Any]:
    """``{(submodule path, attribute): value}`` of the public, non-tensor attributes of ``module`` and its
    submodules (the objects themselves, not copies: processors are swapped, not mutated)."""
    return {(path, k): v for path, m in module.named_modules() for k, v in vars(m).items()
            if not k.startswith("_") and not isinstance(v, torch.Tensor)}


def _changed(current: Any, recorded: Any) -> bool:
    if current is recorded:
        return False
    return not (type(current) is type(recorded) and isinstance(current, _PLAIN) and current == recorded)


@contextlib.contextmanager
def recorded_state(module: torch.nn.Module, state: Mapping[tuple[str, str], Any]) -> Iterator[list[str]]:
    """Put back the attributes in ``state`` that differ now, restore the current ones on exit; yields their names
    (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor``)."""
    swapped: list[tuple[Any, str, Any]] = []
    names: list[str] = []
    try:
        for (path, key), value in state.items():
            try:
                owner = module.get_submodule(path) if path else module
            except AttributeError:  # the module's structure changed: export reports it elsewhere
                continue
            current = owner.__dict__.get(key, _MISSING)
            if current is not _MISSING and _changed(current, value):
                swapped.append((owner, key, current))
                owner.__dict__[key] = value
                names.append(f"{path}.{key}" if path else key)
        yield names
    finally:
        for owner, key, current in reversed(swapped):
            owner.__dict__[key] = current


_MISSING = object()
