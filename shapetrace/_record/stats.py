"""What recording cost, counted by the recorder itself: :class:`RecordingStats` (``rec.stats``).

Every call through a recording proxy is timed inside :meth:`Recorder.call <shapetrace._record.recorder.Recorder.call>`
minus the wrapped module call itself, so ``own_seconds`` is shapetrace's own work (flattening inputs and outputs,
copying the first call's tensors, keeping samples), not the model's; attribute reads that go through a proxy to the
module (``pipe.unet.config``) are counted. ``bench/`` turns these into the recording-overhead figure::

    with shapetrace.record(pipe) as rec:
        pipe(prompt)
    rec.stats  # RecordingStats(calls=7, own_seconds=0.0021, attribute_reads=30)

The counters are plain integers updated without a lock: with several threads recording at once a count may
come out a little low; they are diagnostics, never read by the export.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RecordingStats", "StatsCounter"]


@dataclass(frozen=True)
class RecordingStats:
    """``calls``: calls that reached the recorder through a proxy; ``own_seconds``: their time minus the wrapped
    calls'; ``attribute_reads``: attribute reads forwarded through a proxy to its module."""

    calls: int = 0
    own_seconds: float = 0.0
    attribute_reads: int = 0


class StatsCounter:
    """The recorder's live counters; :meth:`freeze` gives the :class:`RecordingStats`."""

    __slots__ = ("attribute_reads", "calls", "own_seconds")

    def __init__(self) -> None:
        self.calls = 0
        self.own_seconds = 0.0
        self.attribute_reads = 0

    def freeze(self) -> RecordingStats:
        return RecordingStats(self.calls, self.own_seconds, self.attribute_reads)
