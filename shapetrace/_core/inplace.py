"""Arguments a call fills in place: the tensors it puts into the plain lists / dicts it was given.

A causal video VAE carries its conv cache from one chunk's call to the next in a list it fills
(``feat_cache[i] = x[:, :, -2:]``). The recorder sees those tensors with :func:`updated_in_place` and records them as
outputs named ``updated.<flat name>`` (:data:`UPDATED`); the flat wrapper returns them from the export, and ``load``
puts the runtime's values back into the caller's list with :func:`write_back`. Only plain lists and dicts are walked
(tuples, caches and other objects are not), and only slots given a new tensor count (not ``x.add_(1)``). Constants
a call leaves in a slot (a marker string such as ``"Rep"``) are kept in the output tree (``"updated"``) and put back
too, so the next call has the structure the recorded one had.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch

from . import tree

__all__ = ["UPDATED", "updated_in_place", "updated_constants", "slot_values", "write_back"]

#: Output-key prefix of an argument slot a call fills in place (``updated.feat_cache.3``).
UPDATED = "updated."


def _slots(value: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    """``(flat name, container, key)`` of every item of the plain lists and dicts in ``value`` (nested ones too):
    the places a call can fill in place. Tuples, caches and other objects are not walked."""
    if type(value) is list:
        items = enumerate(value)
    elif type(value) is dict:
        items = value.items()
    else:
        return
    for k, v in list(items):
        name = f"{prefix}.{k}" if prefix else str(k)
        yield name, value, k
        yield from _slots(v, name)


def updated_in_place(values: Sequence[tuple[str, Any]], before: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors a call put into its arguments' lists / dicts (a conv cache ``feat_cache[i] = x``): by flat name,
    those that are not the object the slot held before (``before``: the call's leaves, flattened before it ran)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in values:
        for slot, container, key in _slots(value, name):
            item = container[key]
            if isinstance(item, torch.Tensor) and item is not before.get(slot):
                out[slot] = item
    return out


def write_back(values: Sequence[tuple[str, Any]], updates: Mapping[str, Any]) -> list[str]:
    """Put ``updates`` (flat name -> value) into the arguments' lists / dicts, as the recorded call did; returns
    the names that have no slot in these arguments."""
    todo = dict(updates)
    for name, value in values:
        for slot, container, key in _slots(value, name):
            if slot in todo:
                container[key] = todo.pop(slot)
    return sorted(todo)


def updated_constants(values: Sequence[tuple[str, Any]], params: list) -> dict[str, Any]:
    """The constants (None, numbers, strings) a call left in its arguments' list / dict slots that held something
    else before it ran (``params``: the call's input tree parameters, flattened before it ran)."""
    before = {n: node.get("value") for n, node in tree.spec_leaves({"t": "args", "params": params})
              if node["t"] == "const"}
    out: dict[str, Any] = {}
    for name, value in values:
        for slot, container, key in _slots(value, name):
            item = container[key]
            if isinstance(item, (str, int, float, bool)) and (slot not in before or before[slot] != item):
                out[slot] = item
    return out


def slot_values(values: Sequence[tuple[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """What the arguments' list / dict slots named ``names`` hold now."""
    wanted = set(names)
    return {slot: container[key] for name, value in values for slot, container, key in _slots(value, name)
            if slot in wanted}
