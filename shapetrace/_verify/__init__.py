"""Verifying: running each graph on each runtime against PyTorch, comparing, re-judging, and the records of a parity run.

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
