"""The tiny export folder several test files share: :class:`Tiny`, its inputs, :func:`make_tiny_export` (an export
folder following ``export_all``'s contract, built in about a second) and :func:`shift_linear_weights` (a wrong
ONNX file on purpose). The fixtures over it (``tiny_dir``, ``tiny``) are in conftest.py."""

import json
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["Tiny", "make_tiny_export", "shift_linear_weights", "tiny_inputs"]


class Tiny(torch.nn.Module):
    """Float, bool and integer outputs from a float and an integer input, all dynamic in batch and seq."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x, ids):
        h = self.lin(x + self.emb(ids))
        return h, h > 0, ids.sum(-1)


def tiny_inputs(batch=2, seq=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, 8, generator=g), torch.randint(0, 10, (batch, seq), generator=g)


def make_tiny_export(out: Path) -> Path:
    """An export folder following export_all's contract (manifest + onnx + IR + npz), built in about a second."""
    import openvino as ov

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Tiny().eval()
    x, ids = tiny_inputs()
    axes = {0: "batch", 1: "seq"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, ids), str(out / "tiny.onnx"), dynamo=False, input_names=["x", "ids"],
                          output_names=["h", "positive", "total"],
                          dynamic_axes={"x": axes, "ids": axes, "h": axes, "positive": axes, "total": {0: "batch"}})
    ov.save_model(ov.convert_model(str(out / "tiny.onnx")), str(out / "tiny.xml"), compress_to_fp16=False)
    with torch.no_grad():
        h, pos, total = model(x, ids)
    np.savez(out / "tiny.inputs.npz", x=x.numpy(), ids=ids.numpy())
    np.savez(out / "tiny.outputs.npz", h=h.numpy(), positive=pos.numpy(), total=total.numpy())
    entry = {
        "name": "tiny", "module": "model", "method": "forward", "class": "_tiny:Tiny",
        "files": {"onnx": "tiny.onnx", "openvino": "tiny.xml", "inputs": "tiny.inputs.npz",
                  "outputs": "tiny.outputs.npz"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 8], "example_shape": [2, 5, 8],
                    "value_range": None},
                   {"name": "ids", "dtype": "int64", "shape": ["batch", "seq"], "example_shape": [2, 5],
                    "value_range": [int(ids.min()), int(ids.max())]}],
        "outputs": [{"name": "h", "dtype": "float32", "shape": ["batch", "seq", 4], "example_shape": [2, 5, 4]},
                    {"name": "positive", "dtype": "bool", "shape": ["batch", "seq", 4], "example_shape": [2, 5, 4]},
                    {"name": "total", "dtype": "int64", "shape": ["batch"], "example_shape": [2]}],
        "constants": {},
        "dims": {"batch": {"min": 1, "max": None, "example": 2}, "seq": {"min": 1, "max": 64, "example": 5}},
        "constraints": [],
        "error": None,
    }
    manifest = {"format_version": 1, "shapetrace_version": "0.1.0", "object_class": "builtins:dict",
                "tools": {}, "graphs": [entry], "parity": None}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def shift_linear_weights(out, delta):
    """Move the tiny export's Linear weight in its ONNX file by ``delta`` (a wrong export on purpose)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(out / "tiny.onnx"))
    weight = next(t for t in model.graph.initializer if sorted(t.dims) == [4, 8])  # the Linear weight
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + np.float32(delta), weight.name))
    onnx.save(model, str(out / "tiny.onnx"))
