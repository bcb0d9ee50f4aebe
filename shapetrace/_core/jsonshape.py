"""Values read from a JSON file shapetrace wrote, checked to be of the type the reader expects: a string
(:func:`text`), a shape (:func:`shape`: a list of sizes and dim names) and a recorded shape (:func:`example_shape`:
sizes only, bounded, so a tampered file claiming a 10^12-element tensor is refused before anything is allocated).
Each raises ``TypeError`` / ``ValueError``; the reader turns them into its typed error, naming the entry."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MAX_DIM", "MAX_ELEMENTS", "text", "shape", "example_shape"]


def text(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__} {v!r:.60}")
    return v


#: The largest size a manifest may give one dim, and the most elements a recorded (example) shape may hold: a
#: tampered manifest claiming more is refused before anything is allocated from it.
MAX_DIM = (1 << 31) - 1
MAX_ELEMENTS = 1 << 32


def shape(values: Any) -> tuple:
    """A shape read from JSON: a list of sizes (0 ... :data:`MAX_DIM`) and dim names; anything else is refused."""
    if values is None:
        return ()
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"a shape must be a list, not {type(values).__name__} {values!r:.60}")
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_DIM:
            out.append(v)
        else:
            raise ValueError(f"a shape holds {v!r:.60}; sizes are integers from 0 to {MAX_DIM}, or dim names")
    return tuple(out)


def example_shape(values: Any) -> tuple:
    """A recorded shape: sizes only, at most :data:`MAX_ELEMENTS` elements in all."""
    found = shape(values)
    if any(isinstance(v, str) for v in found):
        raise ValueError(f"a recorded shape holds a dim name ({list(found)!r:.80}); it has sizes only")
    if math.prod(found) > MAX_ELEMENTS:
        raise ValueError(f"a recorded shape {list(found)} holds {math.prod(found):,} elements, more than "
                         f"{MAX_ELEMENTS:,}; refused, nothing allocated")
    return found
