"""Recording: the proxy ``record()`` installs, the recorder that turns module calls into graphs, and the frozen records of a run.

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
