"""A Python ``if`` on tensor data, exported as the recorded call took it.

Multimodal models branch on their inputs' values: ``if pixel_values is not None and (input_ids ==
image_token_id).any(): ...`` merges image features only when the prompt holds placeholders. ``torch.export`` cannot
follow such a branch at any size (``GuardOnDataDependentSymNode: ... Eq(u0, 1)``), and the exporters that trace by
running the module take the branch the example took and fix every dim besides.

Under :func:`as_recorded`, a truth test of a tensor (``Tensor.__bool__``) that ``torch.export`` cannot decide is
answered as an eager run of the module on the same example inputs answered it at the same line
(:func:`recorded_answers`), when every answer there was the same; any other undecidable test fails as before. The
graph then serves the calls that take the same branches, as a traced graph does, with its dims dynamic: export
writes the answers into ``tools.branches_as_recorded`` (line and answer), and verify runs the graph on the recorded
and on other inputs as for every graph.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

__all__ = ["as_recorded", "recorded_answers", "written", "read"]


_TORCH = os.path.dirname(torch.__file__) + os.sep


def _site(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def recorded_answers(run: Callable[[], Any]) -> dict[str, bool | None]:
    """Each line where ``run()`` (an eager call) tests a tensor's truth, with the answer it always got there
    (None where the answers differ)."""
    seen: dict[str, set[bool]] = {}
    truth = torch.Tensor.__bool__

    def noted(self: torch.Tensor) -> bool:
        answer = truth(self)
        seen.setdefault(_site(), set()).add(answer)
        return answer

    torch.Tensor.__bool__ = noted
    try:
        with torch.no_grad():
            run()
    finally:
        torch.Tensor.__bool__ = truth
    return {site: next(iter(answers)) if len(answers) == 1 else None for site, answers in seen.items()}


@contextlib.contextmanager
def as_recorded(answers: Mapping[str, bool | None], used: set[str] | None = None) -> Iterator[None]:
    """In the block, a tensor truth test ``torch.export`` cannot decide gets the recorded answer of its line
    (``answers``: :func:`recorded_answers`); the lines so answered are added to ``used``. Restored on exit."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    truth = torch.Tensor.__bool__

    def decided(self: torch.Tensor) -> bool:
        try:
            return truth(self)
        except GuardOnDataDependentSymNode as e:
            site = _site()
            if site.startswith(_TORCH):  # torch's own dispatch calling the test again: the user's line answers
                raise
            answer = answers.get(site)
            if answer is None:
                e.add_note(f"a truth test at {site}, " + (
                    "whose recorded answers differ" if site in answers else "not reached by the eager run"))
                raise
            if used is not None:
                used.add(site)
            return answer

    torch.Tensor.__bool__ = decided
    try:
        yield
    finally:
        torch.Tensor.__bool__ = truth


def written(answers: Mapping[str, bool | None], used: Iterable[str]) -> list[dict[str, Any]]:
    """The answers that were used, as ``tools.branches_as_recorded`` holds them."""
    return [{"line": site, "answer": answers[site]} for site in sorted(used)]


def read(entries: Iterable[Mapping[str, Any]]) -> dict[str, bool]:
    """``tools.branches_as_recorded`` read back into answers by line."""
    return {str(e["line"]): bool(e["answer"]) for e in entries}
