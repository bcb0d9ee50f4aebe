"""The libraries' own data-dependent assertions, switched off for one export.

Model code checks its inputs against each other with assertions on tensor *values*: a vision-language model asserts
that the prompt holds as many image tokens as there are image features (``torch_compilable_check(n_image_tokens *
hidden == features.numel())`` in transformers). Eager PyTorch evaluates them; exporters cannot: ``torch.export``
leaves an unbacked symbol no output carries (``PendingUnbackedSymbolNotFound``), ``torch.jit.trace`` evaluates the
traced condition as False (``Expected cond to be True``), and OpenVINO's frontends fail on both. No exported format
can hold such an assertion anyway (ONNX and OpenVINO IR have no assert op): the deployed graph never checks it.

transformers has a switch for exactly this, read at every call: ``TRANSFORMERS_DISABLE_TORCH_CHECK=1``.
:func:`off` sets it for a block. The export of a graph that failed with the checks on is retried once inside it
(:func:`shapetrace._export.graph_export.export_graph`), and the manifest says so (``tools["data_checks"]``); verify then
compares the result with PyTorch, where the checks run as usual. A graph that exports with the checks on keeps
them on: to ``torch.export`` a check on sizes is also a hint it may need. Only graphs whose code calls the checks
are retried (:func:`can_turn_off`: a (sub)module's class is defined where ``torch_compilable_check`` is imported).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

__all__ = ["ENV", "can_turn_off", "off"]

#: transformers' switch (``transformers.utils.import_utils.torch_compilable_check``).
ENV = "TRANSFORMERS_DISABLE_TORCH_CHECK"
_CHECK = "torch_compilable_check"


def can_turn_off(module: Any) -> bool:
    """True when turning the checks off could change the export of ``module``: its checks are on and the code of
    one of its (sub)modules' classes calls them (its Python module imported ``torch_compilable_check``) -- so that a
    graph that fails for another reason is not exported twice for nothing."""
    if "transformers" not in sys.modules or os.environ.get(ENV, "0") == "1":
        return False
    seen: set[str] = set()
    for m in module.modules() if hasattr(module, "modules") else ():
        name = type(m).__module__
        if name not in seen:
            seen.add(name)
            if getattr(sys.modules.get(name), _CHECK, None) is not None:
                return True
    return False


@contextlib.contextmanager
def off() -> Iterator[None]:
    """transformers' data-dependent checks off inside the block; the environment as it was afterwards."""
    before = os.environ.get(ENV)
    os.environ[ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
