"""The two helpers every builder of :mod:`shapetrace.testing` shares: :func:`require` and :func:`seeded`.

:func:`require` is the one place an optional dependency (diffusers, transformers, controlnet_aux, PIL) is
imported: a missing one raises ``ImportError`` naming the extra that installs it, ``from None`` (httpx style),
so importing :mod:`shapetrace.testing` itself never needs more than torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import torch

from .._core.optional import require as _require

#: The extra that installs everything the offline pipelines import.
EXTRA = "diffusers"


def require(module: str) -> ModuleType:
    """``importlib.import_module(module)``, or ``ImportError`` naming ``pip install 'shapetrace[diffusers]'``.

    The message keeps the original reason (a missing package, or one that fails to import) in one line; the
    original traceback is dropped (``from None``) because the fix is the same either way.
    """
    return _require(module, EXTRA, needed_by="shapetrace.testing")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the block and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
