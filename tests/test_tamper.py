"""A tampered export folder is refused with a typed error, and nothing outside the folder is read: every file name in
a manifest or signatures file resolves inside its folder (absolute names, ``..``, links leaving the folder are
:class:`~shapetrace.UnsafePathError`), the external data an ONNX file names too, ``.npz`` files never hold pickles
and never make a reader allocate what their headers claim, and wrong types or huge shapes in the JSON are a
:class:`~shapetrace.SignatureFileError` naming the entry, not a ``TypeError`` from deep inside."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import zipfile

import numpy as np
import pytest

import shapetrace
from shapetrace import backends
from shapetrace._core.files import load_npz
from shapetrace.manifest import read

_OPENED: list[str] | None = None


def _audit(event, args):
    if event == "open" and _OPENED is not None and args and isinstance(args[0], (str, bytes)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # stays for the process; records only inside `_opened()`


@contextlib.contextmanager
def _opened():
    """Every path Python opens inside the block (``open``, ``np.load``, ``Path.read_text`` ...)."""
    global _OPENED
    _OPENED = found = []
    try:
        yield found
    finally:
        _OPENED = None


@pytest.fixture
def outside(tmp_path):
    """A file outside the export folder that a tampered file names."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 1024)
    return secret


def _tamper(folder, change):
    data = json.loads((folder / "manifest.json").read_text())
    change(data["graphs"][0])
    (folder / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_manifest_naming_a_file_outside_the_folder_is_refused_and_nothing_outside_is_read(tiny, outside, how):
    name = {"absolute": str(outside), "dotdot": f"../{outside.name}", "symlink": "link.npz"}[how]
    if how == "symlink":
        (tiny / "link.npz").symlink_to(outside)
    _tamper(tiny, lambda g: g["files"].__setitem__("inputs", name))
    with _opened() as opened:
        with pytest.raises(shapetrace.UnsafePathError, match=r"names graph 'tiny'.s file .*outside the export folder"):
            read(tiny)
        with pytest.raises(shapetrace.UnsafePathError):
            shapetrace.verify(tiny, write=False)
    assert not any(outside.name in p for p in opened), opened


@pytest.mark.parametrize("change, match", [
    (lambda g: g.__setitem__("inputs", "x"), r"graph 'tiny' lacks inputs"),
    (lambda g: g["inputs"][0].__setitem__("shape", "batch"), r"malformed \(TypeError: a shape must be a list"),
    (lambda g: g["inputs"][0].__setitem__("shape", [2, -1]), r"a shape holds -1; sizes are integers from 0"),
    (lambda g: g["inputs"][0].__setitem__("name", 7), r"malformed \(TypeError: expected a string, got int 7"),
    (lambda g: g.__setitem__("dims", "batch"), r"graph 'tiny' is malformed \(AttributeError"),
    (lambda g: g["dims"]["batch"].__setitem__("example", "2"), r"dim 'batch' has example '2'; it is a size"),
    (lambda g: g["inputs"][0].__setitem__("example_shape", [10 ** 6, 10 ** 6]),
     r"a recorded shape \[1000000, 1000000\] holds 1,000,000,000,000 elements, .*refused, nothing allocated"),
    (lambda g: g["outputs"][0].__setitem__("example_shape", [2 ** 40]), r"a shape holds 1099511627776"),
    (lambda g: g["files"].__setitem__("onnx", {"a": 1}), r"graph 'tiny'.s files\['onnx'\] is \{'a': 1\}, not a file"),
], ids=["inputs-not-a-list", "shape-a-string", "negative-size", "name-an-int", "dims-a-string",
        "example-a-string", "huge-example-shape", "huge-dim", "file-name-a-list"])
def test_wrong_types_and_huge_shapes_in_a_manifest_are_a_typed_error(tiny, change, match):
    _tamper(tiny, change)
    with pytest.raises(shapetrace.SignatureFileError, match=match):
        read(tiny)


def _external(folder, location):
    """tiny.onnx with its weights moved to external data at ``location`` (written as is, past onnx's own checks)."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(folder / "tiny.onnx"))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="tiny.onnx.data", size_threshold=0)
    onnx.save(model, str(folder / "tiny.onnx"))
    proto = onnx.load(str(folder / "tiny.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    (folder / "tiny.onnx").write_bytes(proto.SerializeToString())


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "inside"])
def test_onnx_external_data_outside_the_folder_is_refused_before_a_runtime_opens_it(tiny, outside, how):
    pytest.importorskip("onnxruntime")
    (outside.parent / "tiny.onnx.data").write_bytes(b"")  # never read: refused by name
    location = {"absolute": str(outside), "dotdot": f"../{outside.name}", "symlink": "link.data",
                "inside": "tiny.onnx.data"}[how]
    if how == "symlink":
        (tiny / "link.data").symlink_to(outside)
    _external(tiny, location)
    entry = read(tiny).graph("tiny")
    if how == "inside":  # the export's own layout still loads
        with backends.open_runner("onnxruntime", tiny, entry) as runner:
            assert set(runner.infer(dict(np.load(tiny / "tiny.inputs.npz")))) == {"h", "positive", "total"}
        return
    with _opened() as opened:
        with pytest.raises(shapetrace.UnsafePathError, match=r"keeps the data of tensor .* outside the export folder"):
            backends.open_runner("onnxruntime", tiny, entry)
        report = shapetrace.verify(tiny, backends=("onnxruntime",), write=False)  # the graph's check says why
        assert not report and "keeps the data of tensor" in str(report)
    assert not any(outside.name in p for p in opened), opened


def _npz_member(header_shape, payload=b"\0" * 16, dtype="<f4"):
    head = {"descr": dtype, "fortran_order": False, "shape": header_shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, head)
    return buf.getvalue() + payload


def test_an_npz_header_claiming_a_huge_array_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", _npz_member((10 ** 6, 10 ** 6)))
    with pytest.raises(shapetrace.SignatureFileError,
                       match=r"x.npy claims shape \[1000000, 1000000\] \(4,000,000,000,000 bytes\) but holds"):
        load_npz(path, "test inputs")


def test_an_npz_holding_a_pickle_is_refused(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with _opened():
        with pytest.raises(shapetrace.SignatureFileError, match="is not a readable .npz"):
            load_npz(path, "test inputs")


def test_a_signatures_file_naming_examples_outside_its_folder_is_refused(tmp_path, outside):
    import torch

    holder = type("Holder", (), {})()
    holder.m = torch.nn.Linear(2, 2)
    with shapetrace.record(holder) as rec:
        holder.m(torch.ones(1, 2))
    folder = tmp_path / "rec"
    rec.save(folder)
    data = json.loads((folder / "signatures.json").read_text())
    data["graphs"][0]["examples"] = f"../{outside.name}"
    (folder / "signatures.json").write_text(json.dumps(data))
    with _opened() as opened:
        with pytest.raises(shapetrace.UnsafePathError, match=r"signatures.json names an examples file '\.\./secret"):
            shapetrace.Recording.load(folder)
    assert not any(outside.name in p for p in opened), opened
