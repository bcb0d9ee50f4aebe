"""The runner interface on a tiny hand-built export: names, dtypes, dynamic shapes, missing files and packages."""

import dataclasses
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from shapetrace import RunnerError
from shapetrace.manifest import GraphEntry
from shapetrace.backends import OnnxRuntimeRunner, OpenVINORunner, TorchRunner, open_runner

from _tiny import Tiny, tiny_inputs

@pytest.fixture
def tiny(tiny_dir, tmp_path):
    """A private copy of the tiny export (tests may break it) and its graph entry."""
    out = tmp_path / "export"
    shutil.copytree(tiny_dir, out)
    return out, GraphEntry.from_json(json.loads((out / "manifest.json").read_text())["graphs"][0])


def _reference(x, ids):
    torch.manual_seed(0)
    with torch.no_grad():
        return [t.numpy() for t in Tiny().eval()(torch.as_tensor(x), torch.as_tensor(ids))]


# ------------------------------------------------------------------------------------------ runners


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("size", [(2, 5), (3, 7), (1, 1)])
def test_runner_matches_pytorch_at_any_dynamic_size(tiny, backend, size):
    out, entry = tiny
    x, ids = tiny_inputs(*size, seed=1)
    with open_runner(backend, out, entry) as runner:
        got = runner.infer({"x": x.numpy(), "ids": ids.numpy()})
    h, pos, total = _reference(x, ids)
    assert list(got) == ["h", "positive", "total"]
    assert got["h"].shape == (*size, 4) and got["h"].dtype == np.float32
    np.testing.assert_allclose(got["h"], h, atol=1e-5, rtol=1e-5)
    assert got["positive"].dtype == np.bool_ and (got["positive"] == pos).all()
    assert got["total"].dtype == np.int64 and (got["total"] == total).all()


def test_torch_runner_runs_the_live_module_and_casts_inputs(tiny):
    out, entry = tiny
    torch.manual_seed(0)
    model = Tiny().eval()
    x, ids = tiny_inputs(3, 4)
    with open_runner("torch", out, entry, module=model) as runner:
        assert isinstance(runner, TorchRunner)
        got = runner.infer({"x": x.numpy().astype(np.float64), "ids": ids.numpy().astype(np.int32)})
    h, pos, total = _reference(x, ids)
    np.testing.assert_allclose(got["h"], h, atol=1e-6)
    assert (got["total"] == total).all() and got["total"].dtype == np.int64
    with pytest.raises(ValueError, match="module=flat_module"):
        open_runner("torch", out, entry)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_feed_is_cast_to_the_dtype_the_model_declares(tiny, backend):
    out, entry = tiny
    x, ids = tiny_inputs()
    with open_runner(backend, out, entry) as runner:
        got = runner.infer({"x": x.numpy().astype(np.float64), "ids": ids.numpy().astype(np.int32)})
    np.testing.assert_allclose(got["h"], _reference(x, ids)[0], atol=1e-5)


def test_openvino_compiles_at_f32_for_parity(tiny):
    import openvino as ov

    out, entry = tiny
    with open_runner("openvino", out, entry) as runner:
        assert isinstance(runner, OpenVINORunner)
        hint = runner.compiled.get_property("INFERENCE_PRECISION_HINT")
    assert hint == ov.Type.f32


def test_onnxruntime_uses_one_cpu_session_with_the_threads_asked(tiny):
    out, entry = tiny
    with open_runner("onnxruntime", out, entry, threads=1) as runner:
        assert isinstance(runner, OnnxRuntimeRunner)
        assert runner.session.get_providers() == ["CPUExecutionProvider"]
        assert runner.session.get_session_options().intra_op_num_threads == 1
    assert runner.session is None  # leaving the block frees the session
    with pytest.raises(ValueError, match="precision='bf16' is not supported"):
        open_runner("onnxruntime", out, entry, precision="bf16")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_static_shapes_pin_the_example_sizes(tiny, backend):
    out, entry = tiny
    x, ids = tiny_inputs()
    with open_runner(backend, out, entry, static_shapes=True) as runner:
        got = runner.infer({"x": x.numpy(), "ids": ids.numpy()})
        np.testing.assert_allclose(got["h"], _reference(x, ids)[0], atol=1e-5)
        x3, ids3 = tiny_inputs(3, 5)
        with pytest.raises(RunnerError, match=rf"^{backend}:tiny: "):
            runner.infer({"x": x3.numpy(), "ids": ids3.numpy()})


def test_infer_needs_an_open_runner_and_every_input(tiny):
    out, entry = tiny
    x, ids = tiny_inputs()
    runner = open_runner("onnxruntime", out, entry)
    assert "closed" in repr(runner)
    with pytest.raises(RunnerError, match="is not open; use it as a context manager"):
        runner.infer({"x": x.numpy(), "ids": ids.numpy()})
    with runner:
        assert "open" in repr(runner)
        with pytest.raises(RunnerError, match=r"the feed lacks input\(s\) 'ids'"):
            runner.infer({"x": x.numpy()})


def test_unknown_backend_is_refused(tiny):
    out, entry = tiny
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose from onnxruntime, openvino, torch"):
        open_runner("tensorrt", out, entry)


# ------------------------------------------------------------------------------------------ unusable files


@pytest.mark.parametrize("backend,victim", [("onnxruntime", "tiny.onnx"), ("openvino", "tiny.xml")])
def test_missing_model_file_names_the_file(tiny, backend, victim):
    out, entry = tiny
    (out / victim).unlink()
    with pytest.raises(RunnerError, match=rf"{victim} not found \(the \w+ file of graph 'tiny'\)"):
        open_runner(backend, out, entry)


def test_missing_openvino_weights_name_the_bin_file(tiny):
    out, entry = tiny
    (out / "tiny.bin").unlink()
    with pytest.raises(RunnerError, match=r"tiny\.bin not found"):
        with open_runner("openvino", out, entry):
            pass


@pytest.mark.parametrize("backend,victim", [("onnxruntime", "tiny.onnx"), ("openvino", "tiny.xml")])
def test_corrupt_model_file_is_a_runner_error_naming_the_file(tiny, backend, victim):
    out, entry = tiny
    (out / victim).write_bytes(b"\x00garbage, not a model\xff" * 10)
    with pytest.raises(RunnerError, match=rf"cannot (load|read) .*{victim} .*corrupt"):
        with open_runner(backend, out, entry):
            pass


def test_graph_without_a_file_for_the_backend(tiny):
    out, entry = tiny
    entry = dataclasses.replace(entry, files=dict(entry.files, onnx=None))
    with pytest.raises(RunnerError, match="graph 'tiny' has no onnx file in the manifest"):
        open_runner("onnxruntime", out, entry)


@pytest.mark.parametrize("module,extra", [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_missing_runtime_names_the_extra_to_install(tiny, monkeypatch, module, extra):
    out, entry = tiny
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    runner = open_runner(module, out, entry)
    with pytest.raises(ImportError, match=rf"^{module} is not installed: pip install 'shapetrace\[{extra}\]'$") as e:
        runner.__enter__()
    assert e.value.__cause__ is None and e.value.__suppress_context__  # raised `from None`
