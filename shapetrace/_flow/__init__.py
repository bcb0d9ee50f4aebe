"""``export_all``: every graph exported, quantized where asked, verified, and re-exported static where verify refused the dynamic file.

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
