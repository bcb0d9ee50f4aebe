"""One graph's trouble stays that graph's: a runtime that cannot load its file or memory running out is a failed
check and the other graphs go on; complex-valued rotary embeddings are rewritten real-valued for ONNX and OpenVINO,
and a graph whose complex ops the rewrite does not know is exported to OpenVINO IR from the torch module, checked
and served on OpenVINO, with the manifest saying why it has no ONNX file."""

import json
import shutil

import numpy as np
import pytest
import torch

import shapetrace
from shapetrace import RuntimeMismatchError, VerifyError
from shapetrace._export import writers
from shapetrace._verify import graph_check
from shapetrace.backends.onnxruntime_backend import OnnxRuntimeRunner

from _tiny import make_tiny_export

try:  # transformers' data-dependent assertion, imported as its models import it (export looks for it there)
    from transformers.utils.import_utils import torch_compilable_check
except ImportError:
    torch_compilable_check = None

# ============================================================================ a folder with two graphs


def _two_graphs(out):
    """make_tiny_export's graph 'tiny' and a copy of it, 'tiny2', with files of its own."""
    make_tiny_export(out)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = json.loads(json.dumps(manifest["graphs"][0]))
    entry["name"] = "tiny2"
    for kind, f in list(entry["files"].items()):
        entry["files"][kind] = f.replace("tiny.", "tiny2.")
        shutil.copy(out / f, out / entry["files"][kind])
    shutil.copy(out / "tiny.bin", out / "tiny2.bin")
    manifest["graphs"].append(entry)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def two_dir(tmp_path_factory):
    return _two_graphs(tmp_path_factory.mktemp("two") / "export")


@pytest.fixture
def two(two_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(two_dir, out)
    return out


def _onnx_onnxruntime_cannot_load(path):
    """A valid ONNX file (onnx.checker accepts it) with an op no ONNX Runtime kernel implements."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info(n, t, ["batch", "seq", 4][: 1 if n == "total" else 3])
               for n, t in (("h", TensorProto.FLOAT), ("positive", TensorProto.BOOL), ("total", TensorProto.INT64))]
    node = helper.make_node("NoSuchKernel", ["x", "ids"], ["h", "positive", "total"], domain="shapetrace.test")
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("shapetrace.test", 1)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _by(report, graph, backend=None):
    return [c for c in report.checks if c.graph == graph and (backend is None or c.backend == backend)]


def test_a_file_onnxruntime_cannot_load_is_that_graphs_failed_check(two):
    _onnx_onnxruntime_cannot_load(two / "tiny.onnx")
    report = shapetrace.verify(two)
    assert not report
    (fail,) = report.failures
    assert (fail.graph, fail.backend, fail.verdict) == ("tiny", "onnxruntime", "ERROR")
    assert "onnxruntime cannot load" in fail.error and "NoSuchKernel" in fail.error
    assert _by(report, "tiny", "openvino") and all(_by(report, "tiny", "openvino"))  # OpenVINO still checked
    assert len(_by(report, "tiny2")) == 9 and all(_by(report, "tiny2"))  # the other graph goes on
    stored = json.loads((two / "manifest.json").read_text())["parity"]
    assert stored["num_failures"] == 1 and "NoSuchKernel" in stored["summary"]


def test_an_ir_openvino_cannot_read_is_that_graphs_failed_check(two):
    (two / "tiny2.xml").write_text("<net><layers><layer id='0' type='Nonsense'/></layers></net>")
    report = shapetrace.verify(two, write=False)
    (fail,) = report.failures
    assert (fail.graph, fail.backend, fail.verdict) == ("tiny2", "openvino", "ERROR")
    assert "openvino cannot" in fail.error
    assert all(_by(report, "tiny")) and all(_by(report, "tiny2", "onnxruntime"))


def test_an_unreadable_data_file_fails_its_graph_only(two):
    (two / "tiny.inputs.npz").write_bytes(b"not an npz")
    report = shapetrace.verify(two, write=False)
    (fail,) = report.failures
    assert fail.graph == "tiny" and fail.verdict == "ERROR" and "is not a readable .npz" in fail.error
    assert len(_by(report, "tiny2")) == 9 and all(_by(report, "tiny2"))


def test_running_out_of_memory_is_a_failed_check(two, monkeypatch):
    real_compare, real_resized = graph_check.compare_arrays, graph_check.resized_inputs

    def compare(got, ref, **kw):
        if got.dtype == np.float32 and got.ndim == 3:  # output 'h' of every graph
            raise MemoryError("Unable to allocate 406. MiB for an array with shape (53215232,) and data type float64")
        return real_compare(got, ref, **kw)

    def resized(entry, *a, **kw):
        if entry.name == "tiny2":
            raise MemoryError()
        return real_resized(entry, *a, **kw)

    monkeypatch.setattr(graph_check, "compare_arrays", compare)
    monkeypatch.setattr(graph_check, "resized_inputs", resized)
    report = shapetrace.verify(two, write=False)
    tiny = _by(report, "tiny")
    assert {c.output for c in tiny if not c} == {"h"}  # each 'h' comparison failed, the others ran and passed
    assert all(c.verdict == "ERROR" and "406. MiB" in c.error for c in tiny if c.output == "h")
    assert sum(bool(c) for c in tiny) == 6
    (oom,) = _by(report, "tiny2")  # the graph's check that ran out of memory, with the reason
    assert oom.verdict == "ERROR" and oom.error.startswith("MemoryError: ran out of memory checking this graph")


def test_folder_and_argument_problems_still_raise(two):
    (two / "tiny2.outputs.npz").unlink()  # the folder does not hold what its manifest lists: said before any work
    with pytest.raises(VerifyError, match=r"tiny2\.outputs\.npz not found \(the outputs file of graph 'tiny2'\).*"
                                          r"re-run export_all \(or verify the other graphs: graphs=\[\.\.\.\] "
                                          r"without 'tiny2'\)"):
        shapetrace.verify(two)
    assert json.loads((two / "manifest.json").read_text())["parity"] is None  # nothing was written
    assert shapetrace.verify(two, graphs=["tiny"])  # the rest of the folder is still usable
    (two / "tiny.bin").unlink()
    with pytest.raises(VerifyError, match=r"tiny\.bin not found \(the openvino file of graph 'tiny'\)"):
        shapetrace.verify(two, graphs=["tiny"])
    assert shapetrace.verify(two, graphs=["tiny"], backends=("onnxruntime",), write=False)  # not needed: fine
    with pytest.raises(VerifyError, match="tolerances key 'nope' names no graph"):
        shapetrace.verify(two, tolerances={"nope": {"atol": 1.0}})


# ============================================================================ complex-valued rotary embeddings


class ComplexRotary(torch.nn.Module):
    """Rotary position embedding the way many transformers write it: a complex table from ``torch.polar``,
    queries viewed as complex numbers and rotated by a complex product."""

    def __init__(self, dim=8, heads=2, max_len=64, unknown=False):
        super().__init__()
        self.dim, self.heads, self.unknown = dim, heads, unknown
        self.proj = torch.nn.Linear(dim * heads, dim * heads)
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        freqs = torch.outer(torch.arange(max_len).float(), inv)
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(freqs), freqs), persistent=False)

    def forward(self, hidden_states):
        b, s, _ = hidden_states.shape
        q = self.proj(hidden_states).view(b, s, self.heads, self.dim)
        qc = torch.view_as_complex(q.float().reshape(b, s, self.heads, -1, 2))
        if self.unknown:  # a complex op the real-valued rewrite does not know (abs)
            qc = qc * (qc.abs() + 1.0)
        rotated = torch.view_as_real(qc * self.freqs_cis[:s][None, :, None, :]).flatten(3)
        return rotated.reshape(b, s, -1)


class RotaryPipe:
    """Two graphs: one with complex intermediates, one plain."""

    def __init__(self, unknown=False):
        torch.manual_seed(0)
        self.rotary = ComplexRotary(unknown=unknown).eval()
        self.head = torch.nn.Linear(16, 4).eval()

    @torch.no_grad()
    def __call__(self, x):
        return self.head(self.rotary(x))


def test_complex_arithmetic_is_rewritten_real_valued_for_onnx_and_openvino(tmp_path):
    pipe = RotaryPipe()
    with shapetrace.record(pipe):
        pipe(torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)))
    result = shapetrace.export_all(pipe, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    rot = result.manifest.graph("rotary")
    assert rot.file("onnx") == "rotary.onnx" and rot.no_onnx is None
    assert {"view_as_complex", "mul", "buffer module_freqs_cis"} <= set(rot.tools["complex_rewritten"])
    assert {(c.backend, c.input_set) for c in result.parity.checks if c.graph == "rotary"} >= {
        ("onnxruntime", "example"), ("onnxruntime", "resized"), ("openvino", "example"), ("openvino", "resized")}
    x = torch.randn(3, 9, 16, generator=torch.Generator().manual_seed(2))  # another batch and sequence length
    want = pipe(x)
    for backend in ("onnxruntime", "openvino"):
        with shapetrace.load(pipe, tmp_path / "o", backend=backend):
            torch.testing.assert_close(pipe(x), want, atol=1e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def rotary_export(tmp_path_factory):
    pipe = RotaryPipe(unknown=True)  # the rewrite refuses it: no ONNX file, the IR from the torch module
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    with shapetrace.record(pipe):
        pipe(x)
    out = tmp_path_factory.mktemp("rotary") / "export"
    result = shapetrace.export_all(pipe, out, progress=False)  # verify=True: parity stored in the manifest
    return pipe, out, result


def test_a_graph_with_complex_tensors_exports_to_openvino_without_onnx(rotary_export):
    pipe, out, result = rotary_export
    assert result.ok, str(result)
    rot = next(e for e in result.manifest.graphs if e.name == "rotary")
    assert rot.ok and rot.file("onnx") is None and rot.file("openvino") == "rotary.xml"
    assert "complex-valued tensors" in rot.no_onnx and "view_as_complex" in rot.no_onnx
    assert "aten.abs on complex values" in rot.tools["complex_rewrite_error"]
    assert rot.tools["openvino_from"] == "torch"
    assert not list(out.glob("rotary.onnx*")) and (out / "rotary.xml").is_file()
    head = next(e for e in result.manifest.graphs if e.name == "head")
    assert head.file("onnx") == "head.onnx" and head.no_onnx is None  # the other graph keeps its ONNX file
    # checked on OpenVINO only, against PyTorch at the recorded and at another size; said in a note
    parity = result.parity
    assert parity, str(parity)
    rot_checks = [c for c in parity.checks if c.graph == "rotary"]
    assert {(c.backend, c.reference, c.input_set) for c in rot_checks} == {
        ("torch", "recorded", "example"), ("openvino", "torch", "example"), ("openvino", "torch", "resized")}
    assert any(n.startswith("rotary: no ONNX file (ONNX export failed: the graph computes complex-valued")
               and n.endswith("checked on openvino only") for n in parity.notes)
    assert any(c.backend == "onnxruntime" for c in parity.checks if c.graph == "head")
    stored = json.loads((out / "manifest.json").read_text())
    entry = next(g for g in stored["graphs"] if g["name"] == "rotary")
    assert entry["files"]["onnx"] is None and entry["tools"]["no_onnx"] == rot.no_onnx


def test_the_folder_alone_verifies_the_graph_on_openvino(rotary_export, tmp_path):
    _, out, _ = rotary_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    report = shapetrace.verify(copy, write=False)
    assert report, str(report)
    assert {(c.backend, c.reference, c.input_set) for c in report.checks if c.graph == "rotary"} == {
        ("openvino", "recorded", "example"), ("openvino", "self", "resized")}


def test_load_serves_it_on_openvino_and_refuses_onnxruntime(rotary_export):
    pipe, out, _ = rotary_export
    x = torch.randn(3, 9, 16, generator=torch.Generator().manual_seed(2))  # another batch and sequence length
    want = pipe(x)
    with shapetrace.load(pipe, out, backend="openvino") as rt:
        got = pipe(x)
        assert {(st.graph, st.ran_on, st.calls) for st in rt.stats()} == {("rotary", "openvino:CPU", 1),
                                                                           ("head", "openvino:CPU", 1)}
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-3), float((got - want).abs().max())
    assert type(pipe.rotary) is ComplexRotary  # put back
    with pytest.raises(RuntimeMismatchError, match=r"graph .rotary. has no onnx file \(ONNX export failed: the graph "
                                                   r"computes complex-valued tensors \(view_as_complex, .*\), which "
                                                   r"ONNX cannot represent\); use the other backend"):
        with shapetrace.load(pipe, out, backend="onnxruntime"):
            pass
    assert type(pipe.rotary) is ComplexRotary and type(pipe.head) is torch.nn.Linear


def test_export_all_reports_a_runtime_that_cannot_load_a_graph(tmp_path, monkeypatch):
    pipe = RotaryPipe()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    with shapetrace.record(pipe):
        pipe(x)
    real = OnnxRuntimeRunner._activate

    def activate(self):
        if self.label.endswith(":head"):  # what ONNX Runtime says about a file it has no kernel for
            raise shapetrace.RunnerError(f"onnxruntime cannot load {self.path} (Fail: NOT_IMPLEMENTED : Could not "
                                         f"find an implementation for SomeOp(1) node); the file is missing or corrupt")
        return real(self)

    monkeypatch.setattr(OnnxRuntimeRunner, "_activate", activate)
    result = shapetrace.export_all(pipe, tmp_path / "out", progress=False, graphs=["head"])  # no VerifyError
    assert all(result.graphs.values()) and not result.ok
    (fail,) = result.parity.failures
    assert (fail.graph, fail.backend, fail.verdict) == ("head", "onnxruntime", "ERROR")
    assert "NOT_IMPLEMENTED" in fail.error
    assert all(c for c in result.parity.checks if c.backend != "onnxruntime")  # OpenVINO and torch still checked
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["parity"]["passed"] is False


def test_without_openvino_in_formats_the_onnx_failure_is_the_graphs_error(rotary_export, tmp_path):
    pipe, _, _ = rotary_export
    result = shapetrace.export_all(pipe, tmp_path / "onnx-only", formats=("onnx",), graphs=["rotary"], verify=False,
                                   progress=False)
    assert not result.ok and not list((tmp_path / "onnx-only").glob("rotary.*"))
    error = result.graphs["rotary"].error
    assert error.startswith("ExportError: the graph computes complex-valued tensors (view_as_complex, "), error
    assert "buffer module_freqs_cis" in error or "buffer freqs_cis" in error
    assert "dynamo exporter: " in error and "TorchScript exporter: " in error


class TakesRotaryTable(torch.nn.Module):
    """A transformer block whose rotary table comes in as a complex argument (computed by the pipeline)."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.proj = torch.nn.Linear(dim * heads, dim * heads)

    def forward(self, hidden_states, freqs_cis):
        b, s, _ = hidden_states.shape
        q = self.proj(hidden_states).view(b, s, self.heads, -1, 2)
        rotated = torch.view_as_real(torch.view_as_complex(q) * freqs_cis[None, :, None, :])
        return rotated.reshape(b, s, -1)


class TablePipe:
    def __init__(self):
        torch.manual_seed(0)
        self.block = TakesRotaryTable().eval()

    @staticmethod
    def table(s):
        freqs = torch.outer(torch.arange(s).float(), 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)))
        return torch.polar(torch.ones_like(freqs), freqs)

    @torch.no_grad()
    def __call__(self, x):
        return self.block(x, self.table(x.shape[1]))


def test_a_complex_graph_input_is_exported_as_its_real_view_and_load_converts_the_argument(tmp_path):
    pipe = TablePipe()
    with shapetrace.record(pipe):
        pipe(torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)))
    result = shapetrace.export_all(pipe, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    block = result.manifest.graph("block")
    assert block.complex_inputs == ("freqs_cis",)
    spec = block.input("freqs_cis")
    assert spec.dtype == "float32" and spec.example_shape == (5, 4, 2)  # the (..., 2) view of complex64 (5, 4)
    assert block.file("onnx") == "block.onnx"  # the complex arithmetic inside is rewritten: ONNX too
    assert {(c.backend, c.input_set) for c in result.parity.checks if c.graph == "block"} >= {
        ("onnxruntime", "example"), ("onnxruntime", "resized"), ("openvino", "example"), ("openvino", "resized")}
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(2))  # another batch and sequence length
    want = pipe(x)
    for backend in ("onnxruntime", "openvino"):
        with shapetrace.load(pipe, tmp_path / "o", backend=backend):
            torch.testing.assert_close(pipe(x), want, atol=1e-4, rtol=1e-3)


class BoolMasked(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, score):
        keep = torch.ones(x.shape[:2], dtype=torch.bool).masked_fill(score > 0.5, False)  # Where on bools in ONNX
        return self.lin(x) * keep[..., None]


def test_a_where_on_bool_tensors_is_rewritten_so_onnx_runtime_loads_the_file(tmp_path, record_export):
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 5, 4), torch.rand(2, 5)), m=BoolMasked())
    assert result.ok and result.parity, str(result.parity)
    entry = result.manifest.graph("m")
    assert entry.tools["onnx_bool_where_rewritten"] == 1
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "o" / "m.onnx")).graph.node]
    assert "Where" not in ops and {"And", "Or", "Not"} <= set(ops)
    assert any(c.backend == "onnxruntime" and c.input_set == "resized" and c for c in result.parity.checks)
    x, score = torch.randn(3, 5, 4), torch.rand(3, 5)  # another batch
    with torch.no_grad():
        want = h.m(x, score)
        with shapetrace.load(h, tmp_path / "o", backend="onnxruntime"):
            got = h.m(x, score)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class Untraceable(torch.nn.Module):
    """``forward`` refuses every tracer (no exporter can take it); its public ``decode`` exports as usual. The
    graphs are ``model`` and ``model.decode``: files ``model.*`` and ``model.decode.*`` share a prefix."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            raise RuntimeError("this forward cannot be traced")
        return self.lin(x) * 2

    def decode(self, x):
        return self.lin(x) - 1


def test_a_failed_graph_removes_only_its_own_files(tmp_path, record_export):
    """A graph that fails to export leaves the folder without its files -- and only its: the files of ``model``
    were deleted by prefix, which took ``model.decode.*`` (another graph, exported and listed) with them, and the
    export's own verify then raised for the whole folder instead of reporting one failed graph."""
    torch.manual_seed(0)
    # decode is called (and exported) first, as a vision tower's call comes before the language model's
    _, _, result = record_export(lambda h: (h.model.decode(torch.randn(2, 4)), h.model(torch.randn(2, 4))),
                                 model=Untraceable())
    assert list(result.manifest.names) == ["model.decode", "model"]
    m = result.manifest
    assert m.graph("model").error is not None and not list(m.graph("model").file_names())
    decode = m.graph("model.decode")
    assert decode.ok and list(decode.file_names())
    assert all((tmp_path / "o" / f).is_file() for f in decode.file_names())  # still there, as listed
    assert all(c for c in result.parity.checks if c.graph == "model.decode")  # verified, not raised


#: ``record_export``'s export writing the OpenVINO IR alone (no ONNX file to fall back on)
IR_ONLY = {"formats": ("openvino",)}


class Windows(torch.nn.Module):
    """``Tensor.unfold``: OpenVINO's PyTorch frontend has no rule for it; transformers.exporters' OpenVINO patches
    swap it for a convertible equivalent."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x.unfold(-1, 4, 4).sum(-2))


def test_an_ir_the_frontend_cannot_convert_comes_from_the_patched_trace(tmp_path, record_export):
    """IR only (no ONNX file to fall back on): the IR-from-torch path degrades to a trace under transformers'
    OpenVINO patches, says so, and the graph verifies and serves on OpenVINO."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 3, 8)), m=Windows(), export_kwargs=IR_ONLY)
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result.parity)
    assert entry.tools["openvino_from"] == "torch-patched"
    assert "No conversion rule" in entry.tools["openvino_from_torch_error"] or \
        "unfold" in entry.tools["openvino_from_torch_error"]
    y = torch.randn(3, 5, 8)  # another batch and length
    with torch.no_grad():
        want = h.m(y)
        with shapetrace.load(h, tmp_path / "o", backend="openvino") as rt:
            got = h.m(y)
    assert rt.stats()[0].ran_on.startswith("openvino")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_mixture_of_experts_model_exports_to_onnx_with_transformers_lowerings(tmp_path, record_export):
    """A mixture-of-experts layer's grouped matmul (transformers' own op) has no torchlib lowering: the dynamo
    ONNX export is retried with transformers.exporters' translation table instead of falling to the TorchScript
    exporter (which cannot take the router's histc) or to no ONNX at all; parity holds on both runtimes."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2, max_position_embeddings=64, initializer_range=0.5)
    ids = torch.randint(0, 64, (2, 9))
    _, _, result = record_export(lambda h: h.model(input_ids=ids, use_cache=False),
                                 model=transformers.MixtralModel(config).eval())
    entry = result.manifest.graph("model")
    assert result.ok and result.parity, str(result.parity)
    assert entry.tools["onnx_translations"] == "transformers.exporters"
    assert entry.tools["onnx_exporter"] == "torch.onnx.export(dynamo=True)" and entry.files["onnx"]
    assert {c.backend for c in result.parity.checks} >= {"onnxruntime", "openvino"}


class NoTorchScript(torch.nn.Module):
    """Traceable by ``torch.export`` but not by TorchScript (which OpenVINO's PyTorch frontend uses on a module)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("Expected cond to be True, but got False.")
        return torch.relu(self.lin(x))


def test_an_ir_torchscript_cannot_trace_comes_from_the_exported_program(tmp_path, record_export):
    """IR only: the torch module cannot be traced by TorchScript, so the IR comes from the graph's torch.export
    program (``openvino_from: "program"``), dynamic dims kept; when no source works the graph's error names each."""
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 3, 4)), m=NoTorchScript(), export_kwargs=IR_ONLY)
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result.parity)
    assert entry.tools["openvino_from"] == "program" and "TorchScript" in entry.tools["openvino_from_torch_error"]
    assert entry.input("x").shape[:2] == ("batch", "sequence")
    y = torch.randn(3, 5, 4)
    with torch.no_grad():
        want = h.m(y)
        with shapetrace.load(h, tmp_path / "o", backend="openvino"):
            got = h.m(y)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    h.u = Untraceable()  # no tracer at all takes this one: one error naming every source tried
    with torch.no_grad(), shapetrace.record(h, include=["u"]):
        h.u(torch.randn(2, 4))
    failed = shapetrace.export_all(h, tmp_path / "u", formats=("openvino",), progress=False).manifest.graph("u")
    assert "from any source (torch, torch-patched, onnx)" in failed.error.message  # onnx: a file not kept


class MergesImageFeatures(torch.nn.Module):
    """A vision-language merge: image features scattered over the prompt's image tokens, after transformers' own
    data-dependent assertion that there are as many tokens as features. One image token per row: the trace tiles
    the features' size-1 dim to 2 (so that it stays dynamic), the assertion then fails in every tracer."""

    IMAGE_TOKEN = 3

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, input_ids, image_features):
        embeds = self.embed(input_ids)
        mask = input_ids == self.IMAGE_TOKEN
        torch_compilable_check(mask.sum() * embeds.shape[-1] == image_features.numel(), "tokens != features")
        return self.head(embeds.masked_scatter(mask.unsqueeze(-1), image_features))


def _prompt(batch, length, images=1):
    ids = torch.randint(4, 16, (batch, length))
    ids[:, 1:1 + images] = MergesImageFeatures.IMAGE_TOKEN
    return ids, torch.randn(batch, images, 8)


def test_a_graph_only_its_data_dependent_assertions_stop_exports_with_them_off(record_export, served_on_openvino,
                                                                               monkeypatch):
    """The graph fails with the checks on (every exporter trips on the assertion), is exported again with
    transformers' switch set, says so, verifies against PyTorch (where the check runs) and serves other prompts.
    (The dynamo ONNX exporter now translates the check's op, ``shapetrace._export.onnx_checks``; without that lowering, as
    here, every exporter trips on it.)"""
    from shapetrace._export import datachecks, writers

    pytest.importorskip("transformers")
    monkeypatch.setattr(writers, "_check_translations", dict)
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(*_prompt(2, 7)), m=MergesImageFeatures())
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result.parity)
    assert entry.tools["data_checks"] == "off" and entry.tools["data_checks_on_error"]
    assert {c.backend for c in result.parity.checks} >= {"onnxruntime", "openvino"}
    assert datachecks.ENV not in __import__("os").environ  # the switch does not outlive the export
    got, want = served_on_openvino(h, result.out_dir, *_prompt(3, 11))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class SameTensorTwice(torch.nn.Module):
    """A vision tower whose pooled output is its last hidden state (no pooling head): one tensor, two outputs."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.proj(x)
        return {"last_hidden_state": h, "pooler_output": h}


def test_two_outputs_that_are_one_tensor_are_both_served_on_openvino(record_export, served_on_openvino):
    """In an IR converted from the torch module, OpenVINO's compiled model merges the names of two results of one
    tensor (both called pooler_output): the runner maps the outputs by the IR's own names, in port order."""
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 3, 4)), m=SameTensorTwice(),
                                 export_kwargs={**IR_ONLY, "openvino_from": "torch"})
    assert result.ok and result.parity, str(result.parity)
    got, want = served_on_openvino(h, result.out_dir, torch.randn(3, 5, 4))
    for key in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4)


def test_a_graph_only_openvino_fails_gets_its_ir_from_the_other_source_dims_kept(tmp_path, record_export,
                                                                                 monkeypatch):
    """The IR converted from the ONNX file gives wrong numbers on OpenVINO (here: made to, by doubling its output;
    in the corpus: an op its CPU plugin cannot run). Before, the graph fell back to static -- which converts from
    the same ONNX file and fails alike. The IR now comes from the torch module, its dynamic dims kept."""
    import openvino as ov
    from openvino import opset13 as ops

    real = writers.write_openvino

    def doubled(onnx_path, plan, xml, *a, **k):
        tools = real(onnx_path, plan, xml, *a, **k)
        if tools.get("openvino_from") == "onnx":
            model = ov.Core().read_model(xml)
            result = model.get_results()[0]
            source = result.input_value(0)
            twice = ops.multiply(source, ops.constant(np.float32(2.0)))
            result.input(0).replace_source_output(twice.output(0))
            ov.save_model(model, xml.with_name("doubled.xml"))
            del model, result, source, twice
            for suffix in (".xml", ".bin"):
                xml.with_name("doubled" + suffix).replace(xml.with_suffix(suffix))
        return tools

    monkeypatch.setattr(writers, "write_openvino", doubled)
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 3, 4)), m=torch.nn.Linear(4, 4))
    assert result.ok and result.parity, str(result.parity)
    entry = result.manifest.graph("m")
    note = entry.tools["openvino_source_fallback"]
    assert (note["from"], note["to"]) == ("onnx", "torch") and "openvino" in note["because"]
    assert entry.tools["openvino_from"] == "torch" and "static_fallback" not in entry.tools
    assert entry.input("input").shape[:2] == ("batch", "sequence") and entry.files["onnx"]
    assert not any(p.name.startswith((".shapetrace", "doubled")) for p in result.out_dir.iterdir())


def test_an_onnx_file_onnx_runtime_refuses_is_dropped_and_the_graph_served_from_its_ir(tmp_path, monkeypatch,
                                                                                      record_export):
    # ONNX Runtime's own type / shape inference can refuse a file the exporter wrote and onnx.checker passed (a Div
    # of float by int64); here it refuses this graph's file whatever it holds
    from shapetrace.backends import onnxruntime_backend
    from shapetrace.errors import RunnerError

    activate = onnxruntime_backend.OnnxRuntimeRunner._activate

    def refuse(self):
        if str(self.path).endswith("m.onnx"):
            raise RunnerError(f"onnxruntime cannot load {self.path} (Type Error: Type parameter (T) of Optype (Div) "
                              f"bound to different types)")
        return activate(self)

    monkeypatch.setattr(onnxruntime_backend.OnnxRuntimeRunner, "_activate", refuse)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    h, want, result = record_export(lambda h: (h.m(x), h.k(x)), m=torch.nn.Linear(8, 4), k=torch.nn.Linear(8, 3))
    assert result.ok and result.parity, str(result)
    m, k = result.manifest.graph("m"), result.manifest.graph("k")
    assert m.file("onnx") is None and not (tmp_path / "o" / "m.onnx").exists()
    assert m.no_onnx.startswith("ONNX Runtime cannot load the exported file: onnxruntime cannot load")
    assert m.file("openvino") and m.dims  # the IR stays, dynamic as exported
    assert k.file("onnx") and k.no_onnx is None  # the other graph keeps its file
    assert any(n.startswith("m: no ONNX file (ONNX Runtime cannot load") for n in result.parity.notes)
    assert {c.backend for c in result.parity.checks if c.graph == "m"} == {"torch", "openvino"}


def test_a_dynamic_export_past_its_time_budget_is_exported_static(tmp_path, monkeypatch, record_export):
    # windowed attention's padding arithmetic can keep torch.export's symbolic reasoning busy for many minutes
    from shapetrace._export import tracing

    monkeypatch.setattr(tracing, "DYNAMIC_EXPORT_BUDGET_S", 1e-4)  # every dynamic export runs past it
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    h, want, result = record_export(lambda h: h.m(x), m=torch.nn.Linear(8, 4))
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result)
    assert "ran past 0.0001 s" in entry.tools["dynamic_error"] and not entry.dims
    assert [g["dim"] for g in entry.tools["dynamic_given_up"]] == ["sequence", "batch"]
    import signal

    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL)[0] == 0
