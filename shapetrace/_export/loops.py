"""A Python loop over the positions ``nonzero()`` selected, exported as a loop over every position.

Mixture-of-experts layers dispatch tokens with ``for expert in mask.sum(...).gt(0).nonzero(): ...``: the loop runs
once per expert that some token chose, and its body selects that expert's tokens again from the mask
(``torch.where(mask[expert])``). ``torch.export`` cannot follow it at any size: the loop's length is the number of
selected positions, known only from the data (``GuardOnDataDependentSymNode ... in unbind``), and a TorchScript
trace unrolls it for the experts one call happened to choose.

Under :func:`every_position`, iterating the result of ``nonzero()`` yields every position of the tensor it was
called on (its coordinates in row-major order, as ``nonzero`` orders them) instead of only the selected ones: the
loop gets a length known from shapes, and the selection inside the body stays in the graph. That is the same
computation only when the body does nothing for a position that was not selected (an expert no token chose adds
an empty update), so it is used only after an eager check: the module run with the loop widened must return
exactly what it returns without (:func:`same_when_widened`, on the recorded inputs); export then says so in
``tools.widened_loops`` and verify compares the result with PyTorch as for every graph.

Inside such a body, an emptiness test of a count only the data knows (``if token_idx.numel() == 0: continue``)
is decided under ``torch.export`` as torch decides such tests for sizes it cannot see (size-oblivious: not
empty), so the body runs on what may be an empty selection, which adds nothing; verify runs the graph on the
recorded and on other inputs as for every graph.

A position the body cannot process raises: a one-hot mask one class wider than the experts (a "no expert" class
that routing never picks) visits an expert that does not exist (``IndexError``). Such a position is one the module
as written fails on whenever it is selected, so no call it answers selects it: :func:`positions_to_skip` finds them
one eager run at a time (the loop's line, the selected tensor's shape, the position), and ``every_position(skip)``
leaves them out.

:func:`iterates_selection` tells, from one eager run, whether a module iterates such a result at all.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

__all__ = ["Skip", "every_position", "iterates_selection", "positions_to_skip", "same_when_widened", "skipped"]

#: A position left out of a widened loop: (the loop's ``file:line``, the selected tensor's shape, the position).
Skip = tuple[str, tuple[int, ...], tuple[int, ...]]


@contextlib.contextmanager
def _tracked(on_iter: Callable[[torch.Tensor, tuple[int, ...], str], Iterator[torch.Tensor] | None]
             ) -> Iterator[None]:
    """Remember the input shape of every ``nonzero()`` result made in the block (not ``as_tuple``); iterating one
    asks ``on_iter(result, shape, site)`` (site: the iterating line, ``file:line``), which gives the iterator to use
    or None for the usual one."""
    method, function, iterate = torch.Tensor.nonzero, torch.nonzero, torch.Tensor.__iter__
    shapes: dict[int, tuple[weakref.ref, tuple[int, ...]]] = {}  # by id: tensors compare elementwise

    def remembered(result: Any, source: torch.Tensor, as_tuple: bool) -> Any:
        if not as_tuple and isinstance(result, torch.Tensor) and source.dim() > 0:
            shapes[id(result)] = (weakref.ref(result), tuple(source.shape))
        return result

    def nonzero_method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return remembered(method(self, *args, **kwargs), self, bool(kwargs.get("as_tuple")))

    def nonzero_function(input: torch.Tensor, *args: Any, **kwargs: Any) -> Any:  # noqa: A002 -- torch's name
        return remembered(function(input, *args, **kwargs), input, bool(kwargs.get("as_tuple")))

    def iterated(self: torch.Tensor) -> Iterator[torch.Tensor]:
        ref, shape = shapes.get(id(self), (None, None))
        shape = shape if ref is not None and ref() is self else None
        if shape is None:
            return iterate(self)
        caller = sys._getframe(1)
        widened = on_iter(self, shape, f"{caller.f_code.co_filename}:{caller.f_lineno}")
        return widened if widened is not None else iterate(self)

    torch.Tensor.nonzero, torch.nonzero, torch.Tensor.__iter__ = nonzero_method, nonzero_function, iterated
    try:
        yield
    finally:
        torch.Tensor.nonzero, torch.nonzero, torch.Tensor.__iter__ = method, function, iterate


def _positions(shape: tuple[int, ...], site: str, device: torch.device, skip: frozenset[Skip],
               at: list[Skip | None]) -> Iterator[torch.Tensor]:
    """Each position as its own small tensor made from Python numbers: under ``torch.export`` such a tensor keeps
    its value, so a body that reads it (``int(expert[0])``, ``expert == n``) sees a number, not data. ``at[0]`` is
    the position whose body runs (None once the loop is done)."""
    for coords in itertools.product(*(range(int(n)) for n in shape)):
        key = (site, tuple(int(n) for n in shape), coords)
        if key in skip:
            continue
        at[0] = key
        yield torch.tensor(coords, dtype=torch.long, device=device)
    at[0] = None


@contextlib.contextmanager
def every_position(skip: Iterable[Skip] = (), at: list[Skip | None] | None = None) -> Iterator[None]:
    """In the block, a loop over a ``nonzero()`` result visits every position of the tensor it came from but those
    in ``skip`` (see the module docstring). ``at``: a one-item list that holds the position being processed.
    Restored on exit."""
    skip, at = frozenset(skip), at if at is not None else [None]
    fmt = torch.Tensor.__format__

    def known_number(self: torch.Tensor, spec: str) -> str:  # f"expert_{position[0]}" names a submodule
        if self.dim() == 0 and not self.dtype.is_floating_point and not self.dtype.is_complex:
            try:
                value = self.item()
            except Exception:  # noqa: BLE001 -- data under torch.export: formatted as torch does
                value = None
            if isinstance(value, int):
                return format(value, spec)
        return fmt(self, spec)

    truth = torch.SymBool.__bool__
    torch.Tensor.__format__, torch.SymBool.__bool__ = known_number, _not_empty(truth)
    try:
        with _tracked(lambda result, shape, site: _positions(shape, site, result.device, skip, at)):
            yield
    finally:
        torch.Tensor.__format__, torch.SymBool.__bool__ = fmt, truth


def _not_empty(truth: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``SymBool.__bool__`` that decides a data-dependent comparison of counts with 0 (``Eq(u0, 0)``,
    ``Gt(u0, 0)``) as for a count of at least 1 (the module docstring); any other such condition fails as before."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    def decided(self: Any) -> bool:
        try:
            return truth(self)
        except GuardOnDataDependentSymNode:
            expr = getattr(getattr(self, "node", None), "expr", None)
            answer = _with_counts_positive(expr)
            if answer is None:
                raise
            return answer
    return decided


def _with_counts_positive(expr: Any) -> bool | None:
    """``expr`` (a sympy relation between unbacked counts and 0) decided for counts >= 1; None if undecided."""
    import sympy

    if not isinstance(expr, sympy.core.relational.Relational) or 0 not in expr.args:
        return None
    counts = [x for x in expr.free_symbols if str(x).startswith("u")]
    if not counts or len(expr.free_symbols) != len(counts):
        return None
    value = expr.subs({x: sympy.Symbol(f"{x}_count", integer=True, positive=True) for x in counts})
    return bool(value) if value in (sympy.true, sympy.false) else None


def iterates_selection(run: Callable[[], Any]) -> bool:
    """Whether ``run()`` (an eager call of the module) loops over the result of a ``nonzero()``."""
    seen: list[bool] = []

    def note(result: torch.Tensor, shape: tuple[int, ...], site: str) -> None:
        seen.append(True)
        return None

    with torch.no_grad(), _tracked(note):
        run()
    return bool(seen)


def same_when_widened(run: Callable[[], Any], skip: Iterable[Skip] = ()) -> bool:
    """Whether ``run()`` returns exactly the same tensors with its ``nonzero()`` loops widened (but for ``skip``)
    as without."""
    with torch.no_grad():
        plain = run()
        with every_position(skip):
            widened = run()
    a, b = torch.utils._pytree.tree_leaves(plain), torch.utils._pytree.tree_leaves(widened)
    return len(a) == len(b) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y
        for x, y in zip(a, b))


def positions_to_skip(run: Callable[[], Any], limit: int = 64) -> frozenset[Skip] | None:
    """The positions a widened ``run()`` must leave out because their body raises ``IndexError`` (module
    docstring), found one run at a time; None when a run fails otherwise, or past ``limit`` positions, or when the
    widened run does not return exactly what the plain one does."""
    skip: set[Skip] = set()
    while len(skip) <= limit:
        at: list[Skip | None] = [None]
        try:
            with torch.no_grad(), every_position(skip, at):
                run()
        except IndexError:
            if at[0] is None or at[0] in skip:
                return None
            skip.add(at[0])
            continue
        return frozenset(skip) if same_when_widened(run, skip) else None
    return None


def skipped(written: Iterable[Mapping[str, Any]]) -> frozenset[Skip]:
    """The skips as ``tools.widened_loops_skipped`` writes them (``line``, ``shape``, ``position``), read back."""
    return frozenset((str(w["line"]), tuple(int(n) for n in w["shape"]), tuple(int(n) for n in w["position"]))
                     for w in written)
