"""Exporting one graph: the flat view, ``torch.export`` giving up as few dynamic dims as it can, the rewrites runtimes need, the ONNX / OpenVINO writers and the stateful form.

Private: the public face is :mod:`shapetrace`; names here may change without notice."""
