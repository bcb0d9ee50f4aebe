"""The command line's exit statuses (a public contract, re-exported by :mod:`shapetrace._cli.main`)."""

from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_UNUSABLE"]

EXIT_OK = 0  #: everything passed
EXIT_FAILED = 1  #: a parity check failed, or a graph did not export
EXIT_UNUSABLE = 2  #: unusable input: bad arguments, a source that cannot be loaded or run, a corrupt folder
