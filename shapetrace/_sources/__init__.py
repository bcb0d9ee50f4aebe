"""What the command line records: a Python object, a ``save_pretrained`` folder or a script, opened with its default inputs.

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
