"""Constraints: torch.export's guards as Python expressions over dim names, and the one engine that reads them.

A graph's guards (``height % 2 == 0``, ``height == 1 + (-1 + controlnet_cond_height) // 8``, ``batch != 1``,
``torch.sym_max(...)`` forms, products, ``x <= 2147483648``) are read here and nowhere else:

* :func:`normalize` spells ``torch.sym_max(`` / ``sym_max(`` / ``Max(`` as ``max(`` (same for min);
  :func:`compile_expr` gives an :class:`Expr` and :func:`evaluate` evaluates text, both by walking the syntax tree
  (never ``eval``): int constants, names, ``+ - * // % **`` (exponent 0..64), unary ``- + not``, chained
  comparisons, ``and`` / ``or``, ``max`` / ``min`` (:mod:`.expr`).
* :func:`check` lists what a set of sizes breaks, ranges first; :func:`checkable` sets aside what cannot be read.
* :func:`alternative_sizes` is the one solver: another valid size for every dim (verify's resized inputs,
  :mod:`.solve`); :func:`shifted_sizes` moves every dim by one step together, for models that tie dims in Python.
* :func:`prune` drops the guards that the dim ranges and the kept constraints imply, soundly, so that a reader sees
  the few that matter (:mod:`.prune`, with the prover in :mod:`.poly` and :mod:`.case`).
"""

from .expr import Expr, check, checkable, compile_expr, evaluate, normalize
from .prune import prune, prune_within
from .solve import alternative_sizes, shifted_sizes

__all__ = ["normalize", "Expr", "compile_expr", "evaluate", "check", "checkable", "alternative_sizes", "shifted_sizes",
           "prune", "prune_within"]
