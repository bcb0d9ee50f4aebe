"""The command line (``python -m shapetrace``, installed as ``shapetrace``).

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
