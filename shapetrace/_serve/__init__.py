"""Serving: ``load()`` swaps each exported module for a runtime-backed stand-in that answers its calls.

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
