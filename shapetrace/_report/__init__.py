"""The parity report as HTML, its pictures, the evidence behind each check and the end-to-end check of a whole pipeline.

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
