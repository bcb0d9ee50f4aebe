"""The weights of a module that has no exported graph (a detector's hand network the recorded run never reached,
a graph that failed to export): written once, as safetensors, so that the rebuilt object runs it in PyTorch.

An exported module's weights are never written here: its graph holds them. Parameters and buffers are saved by
every name that reaches them (a tied embedding under both names, read back as one tensor); a submodule that has
its own graph is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import torch

from .._core.walker import find_module_paths, format_path, parse_path, resolve

__all__ = ["unserved", "tensors_of", "save", "load_into"]


def unserved(obj: Any, served: Iterable[str]) -> dict[int, dict[str, torch.Tensor]]:
    """``{id(module): tensors}`` for every module of ``obj`` whose path has no graph among ``served`` (module paths
    of the graphs that exported), less the submodules that have one."""
    served_ids = set()
    for path in served:
        try:
            served_ids.add(id(resolve(obj, parse_path(path))[2]))
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            continue
    out = {}
    for steps, module in find_module_paths(obj):
        if id(module) not in served_ids and format_path(steps):
            tensors = tensors_of(module, served_ids)
            if tensors:
                out[id(module)] = tensors
    return out


def tensors_of(module: torch.nn.Module, skip: Collection[int]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` by every name, except those under a submodule in ``skip`` (ids)."""
    skipped = [f"{name}." for name, m in module.named_modules() if name and id(m) in skip]
    found = {**dict(module.named_parameters(remove_duplicate=False)),
             **dict(module.named_buffers(remove_duplicate=False))}
    return {k: v for k, v in found.items() if v is not None and not any(k.startswith(p) for p in skipped)}


def save(tensors: Mapping[str, torch.Tensor], path: Path) -> dict[str, str]:
    """Write each distinct tensor once into ``path``; returns ``{name: the name it was saved under}`` for the
    names that share a tensor with an earlier one."""
    from safetensors.torch import save_file

    first: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for k, t in tensors.items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride())) if t.numel() else ("empty", k)
        if key in first:
            aliases[k] = first[key]
        else:
            first[key] = k
            unique[k] = t.detach().contiguous().clone()
    save_file(unique, str(path))
    return aliases


def load_into(module: torch.nn.Module, path: Path, aliases: Mapping[str, str]) -> None:
    """Put the saved tensors into ``module`` in place of its meta ones (parameters stay parameters)."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    for name in [*saved, *aliases]:
        tensor = saved[aliases.get(name, name)]
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        old = owner._parameters.get(leaf)
        if leaf in owner._parameters and old is not None:
            owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
        else:
            owner._buffers[leaf] = tensor
