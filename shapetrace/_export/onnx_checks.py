"""ONNX for the op behind ``torch._check_tensor_all``, which torchlib lacks.

transformers checks multimodal inputs with ``torch_compilable_check`` ("as many image tokens as image features"):
with a tensor condition that is ``torch._check_tensor_all``, which puts ``aten._is_all_true`` in the exported
program. The check is a runtime assertion ONNX does not carry; the op itself is a reduction. No ``from __future__
import annotations`` here: onnxscript reads the annotations as types.
"""

import functools

import torch

__all__ = ["translations"]


@functools.cache
def translations() -> dict:
    """For ``torch.onnx.export(..., custom_translation_table=...)`` (imports onnxscript)."""
    import onnxscript
    from onnxscript import BOOL, INT64
    from onnxscript import opset18

    globals().update(op=opset18, BOOL=BOOL, INT64=INT64)  # onnxscript resolves the body's names here

    @onnxscript.script()
    def is_all_true(x: BOOL) -> BOOL:
        return op.Not(op.Cast(op.ReduceMax(op.Cast(op.Not(x), to=INT64.dtype), keepdims=0),  # noqa: F821
                              to=BOOL.dtype))

    return {torch.ops.aten._is_all_true.default: is_all_true}
