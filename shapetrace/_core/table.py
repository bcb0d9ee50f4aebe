"""The one plain-text table renderer every summary uses (the recording, the parity report, the runtime's summary,
the command line's listings): columns padded to their widest cell, two spaces apart, lines right-stripped."""

from __future__ import annotations

from typing import Collection, Sequence

__all__ = ["render"]


def render(rows: Sequence[Sequence[str]], *, rule: bool = True, right: Collection[int] = (),
           right_header: bool = False, indent: str = "", breaks: Collection[int] = ()) -> list[str]:
    """``rows[0]`` is the header, followed by a rule of dashes when ``rule``. Columns in ``right`` are right-aligned
    (in the header too when ``right_header``); a blank line goes before each data row whose index (0 = the first
    row under the header) is in ``breaks``."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str], head: bool) -> str:
        cells = [v.rjust(w) if i in right and (right_header or not head) else v.ljust(w)
                 for i, (v, w) in enumerate(zip(row, widths))]
        return (indent + "  ".join(cells)).rstrip()

    out = [line(rows[0], True)]
    if rule:
        out.append(indent + "  ".join("-" * w for w in widths))
    for k, row in enumerate(rows[1:]):
        if k in breaks:
            out.append("")
        out.append(line(row, False))
    return out
