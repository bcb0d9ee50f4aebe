"""The building blocks every stage stands on: finding modules in objects, flattening trees of tensors, cache objects, signatures, stand-ins, atomic files, the CPU's instruction set.

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
