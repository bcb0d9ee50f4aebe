"""export_all on every offline pipeline: files, names, dynamic dims that hold, constraints, atomic output."""

import json

import numpy as np
import pytest
import torch

import shapetrace
from shapetrace import constraints
from shapetrace._export import writers
from shapetrace._export.flat import flat_module
from shapetrace.manifest import Dim, GraphEntry
from shapetrace.testing import EXAMPLES
from shapetrace._core.walker import parse_path, resolve

#: The zoo's examples; SDXL (its export alone ~35 s on 2 cores) runs with `make test-slow`: the default suite covers
#: its added_cond_kwargs in test_record and the same UNet export path through sd / img2img / controlnet.
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n == "sdxl" else n for n in EXAMPLES]


def _inputs_for(entry, values, seed=0):
    """Random inputs for a manifest graph entry at the dim sizes in ``values``."""
    g = torch.Generator().manual_seed(seed)
    feed = {}
    for spec in entry["inputs"]:
        shape = [values[d] if isinstance(d, str) else d for d in spec["shape"]]
        dtype = getattr(torch, spec["dtype"])
        if dtype.is_floating_point:
            feed[spec["name"]] = torch.randn(shape, generator=g).to(dtype)
        else:
            lo, hi = spec["value_range"] or (0, 1)
            feed[spec["name"]] = torch.randint(int(lo), int(hi) + 1, shape, generator=g).to(dtype)
    return feed


def _run_all(obj, out, entry, feed):
    import onnxruntime as ort
    import openvino as ov

    _, _, module = resolve(obj, parse_path(entry["module"]))
    flat = flat_module(module, GraphEntry.from_json(entry))
    with torch.no_grad():
        ref = [t.numpy() for t in flat(*(feed[i["name"]] for i in entry["inputs"]))]
    np_feed = {k: v.numpy() for k, v in feed.items()}
    sess = ort.InferenceSession(str(out / entry["files"]["onnx"]), providers=["CPUExecutionProvider"])
    ort_out = sess.run([o["name"] for o in entry["outputs"]], np_feed)
    compiled = ov.Core().compile_model(str(out / entry["files"]["openvino"]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled(np_feed)
    ov_out = [res[compiled.output(o["name"])] for o in entry["outputs"]]
    return ref, ort_out, ov_out


def _assert_close(ref, got, what):
    for r, o, in zip(ref, got):
        assert r.shape == o.shape, what
        scale = max(1.0, float(np.abs(r).max()))
        assert np.abs(r - o).max() <= 1e-3 * scale, (what, float(np.abs(r - o).max()))


@pytest.fixture(params=NAMES)
def exported(request, exports):
    return exports.get(request.param)


def test_every_graph_exports_to_both_formats_and_matches_pytorch(exported):
    obj, rec, out, result = exported
    assert result.ok, str(result)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert [g["name"] for g in manifest["graphs"]] == list(rec.graphs)
    for entry in manifest["graphs"]:
        for kind in ("onnx", "openvino", "inputs", "outputs"):
            assert (out / entry["files"][kind]).is_file(), (entry["name"], kind)
        assert (out / entry["files"]["openvino"]).with_suffix(".bin").is_file()
        assert entry["error"] is None and entry["tools"]["opset"] >= 17
        g = rec[entry["name"]]
        assert [i["name"] for i in entry["inputs"]] == list(g.inputs)
        assert [o["key"] for o in entry["outputs"]] == list(g.outputs)
        with np.load(out / entry["files"]["inputs"]) as z:
            feed = {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        ref, ort_out, ov_out = _run_all(obj, out, entry, feed)
        with np.load(out / entry["files"]["outputs"]) as z:
            saved = [z[o["name"]] for o in entry["outputs"]]
        _assert_close(ref, saved, (entry["name"], "saved reference"))
        _assert_close(ref, ort_out, (entry["name"], "onnxruntime"))
        _assert_close(ref, ov_out, (entry["name"], "openvino"))


def test_every_dynamic_dim_holds_at_a_second_valid_size(exported):
    obj, rec, out, result = exported
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["graphs"]:
        values = constraints.alternative_sizes(_dims(entry), entry["constraints"])
        assert values is not None, entry["name"]
        assert all(values[d] != info["example"] for d, info in entry["dims"].items()), (entry["name"], values)
        feed = _inputs_for(entry, values)
        ref, ort_out, ov_out = _run_all(obj, out, entry, feed)
        _assert_close(ref, ort_out, (entry["name"], values, "onnxruntime"))
        _assert_close(ref, ov_out, (entry["name"], values, "openvino"))


def _dims(entry):
    return {n: Dim.from_json(n, d) for n, d in entry["dims"].items()}


def _graph(out, name):
    return next(g for g in json.loads((out / "manifest.json").read_text())["graphs"] if g["name"] == name)


def test_shared_dim_names_and_constraints_of_the_controlnet_pipeline(exports):
    _, _, out, _ = exports.get("controlnet")
    unet, cn, vae = _graph(out, "unet"), _graph(out, "controlnet"), _graph(out, "vae.decode")
    shapes = {i["name"]: i["shape"] for i in unet["inputs"]}
    assert shapes["sample"] == ["batch", 4, "height", "width"]
    assert shapes["encoder_hidden_states"][:2] == ["batch", "sequence"]
    assert shapes["timestep"] == []
    cn_shapes = {i["name"]: i["shape"] for i in cn["inputs"]}
    assert cn_shapes["controlnet_cond"][0] == "batch" == cn_shapes["sample"][0]
    assert [o["name"] for o in unet["outputs"]] == ["output.sample"] and unet["outputs"][0]["key"] == "sample"
    assert unet["constants"]["return_dict"] is False
    assert cn["constants"]["conditioning_scale"] == 1.0
    # the UNet's height must be even (its down-sampling factor); the manifest says so and refuses 9
    ok = {d: info["example"] for d, info in unet["dims"].items()}
    assert constraints.check(unet["constraints"], ok, _dims(unet)) == []
    assert constraints.check(unet["constraints"], {**ok, "height": 9}, _dims(unet)) != []
    # controlnet_cond's height is tied to sample's through the conditioning embedding's 8x down-sampling
    cn_ok = {d: info["example"] for d, info in cn["dims"].items()}
    assert constraints.check(cn["constraints"], {**cn_ok, "controlnet_cond_height": 128}, _dims(cn)) != []
    assert constraints.check(cn["constraints"], {**cn_ok, "height": 16, "controlnet_cond_height": 128},
                             _dims(cn)) == []
    assert vae["outputs"][0]["shape"] == ["batch", 3, "8*height", "8*width"]


def test_img2img_exports_vae_encode_with_its_distribution(exports):
    _, rec, out, result = exports.get("img2img")
    enc = _graph(out, "vae.encode")
    assert [o["name"] for o in enc["outputs"]] == ["latent_dist.parameters"]
    assert enc["output_tree"]["items"][0]["cls"].endswith("DiagonalGaussianDistribution")


def test_openpose_body_model_is_dynamic_in_its_image_size(exports):
    _, _, out, _ = exports.get("openpose")
    body = _graph(out, "body_estimation.model")
    assert body["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert body["inputs"][0]["example_shape"] == [1, 3, 184, 136]


def test_static_export_has_no_dynamic_dims(exports):
    _, _, out, _ = exports.get("text-classification", dynamic="static")
    entry = _graph(out, "model")
    assert entry["dims"] == {} and all(isinstance(d, int) for i in entry["inputs"] for d in i["shape"])


def test_plan_feeds_torch_export_and_openvino_convert_model(exports):
    import openvino as ov

    obj, rec, _, _ = exports.get("sd")
    plan = shapetrace.prepare(obj, "unet", recording=rec)
    ep = torch.export.export(plan.module, plan.args, dynamic_shapes=plan.dynamic_shapes)
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    assert not isinstance(placeholders[0].meta["val"].shape[0], int)  # batch stayed symbolic
    onnx_prog = torch.onnx.export(plan.module, plan.args, dynamic_shapes=plan.dynamic_shapes,
                                  input_names=list(plan.input_names), output_names=list(plan.output_names))
    assert [i.name for i in onnx_prog.model.graph.inputs] == list(plan.input_names)
    model = ov.convert_model(plan.module, example_input=plan.args, input=plan.openvino_input)
    assert model.inputs[0].get_partial_shape().is_dynamic
    assert [p.get_any_name() for p in model.inputs] == list(plan.input_names)


def test_refuses_to_clobber_an_earlier_export(exports, tmp_path):
    obj, rec, out, _ = exports.get("text-classification")
    with pytest.raises(shapetrace.ExportError, match="already holds an export.*overwrite=True"):
        shapetrace.export_all(obj, out, recording=rec, progress=False, verify=False)


def test_one_failing_graph_does_not_stop_the_others(exports, tmp_path, monkeypatch):
    obj, rec, _, _ = exports.get("sd")
    real_onnx, real_openvino = writers.write_onnx, writers.write_openvino

    def broken(plan, *a, **k):  # both writers: a graph whose ONNX step alone fails still gets its IR from torch
        if plan.graph == "unet":
            raise RuntimeError("exporter exploded")
        return real_onnx(plan, *a, **k)

    def broken_ir(onnx_path, plan, *a, **k):
        if plan.graph == "unet":
            raise RuntimeError("exporter exploded")
        return real_openvino(onnx_path, plan, *a, **k)

    monkeypatch.setattr(writers, "write_onnx", broken)
    monkeypatch.setattr(writers, "write_openvino", broken_ir)
    result = shapetrace.export_all(obj, tmp_path / "o", recording=rec, progress=False, verify=False)
    assert not result.ok
    assert "exporter exploded" in result.graphs["unet"].error
    assert result.graphs["text_encoder"] and result.graphs["vae.decode"]
    names = {p.name for p in (tmp_path / "o").iterdir()}
    assert not any(n.startswith("unet.") for n in names)
    assert "text_encoder.onnx" in names and "manifest.json" in names
    assert not any(n.startswith(".shapetrace") for n in names)


def test_failure_midway_leaves_an_earlier_export_intact(exports, tmp_path, monkeypatch):
    obj, rec, _, _ = exports.get("text-classification")
    out = tmp_path / "o"
    shapetrace.export_all(obj, out, recording=rec, progress=False, verify=False)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}  # skeleton/ too

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "write_openvino", disk_full)
    with pytest.raises(shapetrace.DiskFullError, match=r"ran out of disk space .*No space left on device.*"
                                                       r"the earlier export in the folder is intact"):
        shapetrace.export_all(obj, out, recording=rec, progress=False, verify=False, overwrite=True)
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_unflattenable_output_fails_alone_with_a_fix(record_export):
    class Box:  # slots, no __dict__: not flattened by its attributes (a plain class would be)
        __slots__ = ("t",)

        def __init__(self, t):
            self.t = t

    class Boxer(torch.nn.Module):
        def forward(self, x):
            return Box(x * 2)

    _, _, result = record_export(lambda h: (h.boxer(torch.randn(2, 3)), h.lin(torch.randn(2, 3))),
                                 boxer=Boxer(), lin=torch.nn.Linear(3, 3), export_kwargs={"verify": False})
    assert not result.ok
    assert "Box" in result.graphs["boxer"].error and "register_flattener" in result.graphs["boxer"].error
    assert result.graphs["lin"]


def test_openvino_only_export_into_a_folder_with_a_comma(exports, tmp_path):
    import openvino as ov

    obj, rec, _, _ = exports.get("text-classification")
    out = tmp_path / "a,b"
    result = shapetrace.export_all(obj, out, recording=rec, formats=("openvino",), progress=False, verify=False)
    assert result.ok, str(result)
    entry = result.manifest.graphs[0].to_json()
    assert entry["files"]["onnx"] is None and entry["tools"]["openvino_from"] == "torch"
    model = ov.Core().read_model(str(out / entry["files"]["openvino"]))
    assert [p.get_any_name() for p in model.inputs] == [i["name"] for i in entry["inputs"]]
    assert model.inputs[0].get_partial_shape().is_dynamic
    with np.load(out / entry["files"]["inputs"]) as z:
        feed = {k: z[k] for k in z.files}
    with np.load(out / entry["files"]["outputs"]) as z:
        want = z[entry["outputs"][0]["name"]]
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feed)[0]
    assert np.abs(got - want).max() < 1e-4


def test_large_graphs_keep_their_weights_in_external_data(exports, tmp_path, monkeypatch):
    import onnx

    monkeypatch.setattr(writers, "ONNX_EXTERNAL_DATA_ABOVE_BYTES", 1000)
    obj, rec, _, _ = exports.get("text-classification")
    out = tmp_path / "o"
    result = shapetrace.export_all(obj, out, recording=rec, progress=False)
    assert result.ok and result.parity, str(result)
    entry = result.manifest.graphs[0].to_json()
    assert entry["files"]["onnx_data"] == ["model.onnx.data"]
    small = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in small.graph.initializer)


def test_a_size_one_dim_that_broadcasts_is_not_tied_to_batch(tmp_path, record_export):
    class Rotary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x, table):  # table [1, seq, 8] broadcasts over x's batch
            return self.proj(x) * table + x

    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 5, 8), torch.randn(1, 5, 8)), m=Rotary())
    assert result.ok and result.parity, str(result)
    entry = result.manifest.graph("m")
    assert entry.input("table").shape[0] == 1 and entry.input("x").shape[0] == "batch"  # not tied to batch
    assert entry.tools["broadcast_static"] == [{"input": "table", "dims": [0]}]
    x, table = torch.randn(3, 7, 8), torch.randn(1, 7, 8)  # another batch and sequence
    want = h.m(x, table)
    with shapetrace.load(h, tmp_path / "o", backend="onnxruntime"):
        torch.testing.assert_close(h.m(x, table), want, atol=1e-5, rtol=1e-5)


def test_a_size_one_dim_the_trace_at_two_makes_static_stays_at_its_recorded_size(tmp_path, record_export):
    class Pinned(torch.nn.Module):  # traced at batch 2 (against 0/1 specialisation) the branch guards batch == 2
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            y = self.lin(x)
            return y * 3 if x.shape[0] == 2 else y

    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(1, 5, 4)), m=Pinned())
    assert result.ok and result.parity, str(result)
    entry = result.manifest.graph("m")
    assert entry.input("x").shape[0] == 1 and entry.input("x").shape[1] == "sequence"  # not pinned at 2
    assert entry.tools["size1_static"] == [{"input": "x", "dims": [0]}]
    x = torch.randn(1, 9, 4)  # the recorded batch, another sequence
    want = h.m(x)
    with shapetrace.load(h, tmp_path / "o", backend="openvino"):
        torch.testing.assert_close(h.m(x), want, atol=1e-5, rtol=1e-5)


def test_export_leaves_every_module_in_its_mode_even_through_the_torchscript_exporter(monkeypatch, record_export):
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.lin(x))

    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):  # the dynamo exporter fails: the TorchScript one (which flips modes) takes over
        if kwargs.get("dynamo", True):
            raise RuntimeError("dynamo exporter unavailable in this test")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    torch.manual_seed(0)
    enc = Encoder().eval()
    enc.training = True  # mixed modes, as pipelines leave them: the top says training, the dropout is off
    modes = {n: m.training for n, m in enc.named_modules()}
    x = torch.randn(2, 3, 8)
    h, want, result = record_export(lambda h: h.enc(x), enc=enc)
    assert result.manifest.graph("enc").tools["onnx_exporter"] == "torch.onnx.export(dynamo=False)"
    assert {n: m.training for n, m in h.enc.named_modules()} == modes  # the dropout was not switched on
    torch.testing.assert_close(h.enc(x), want)
    assert result.ok and result.parity, str(result)


def test_when_the_dynamic_export_fails_only_the_dims_that_break_it_are_given_up(tmp_path, record_export):
    class SizeKeyed(torch.nn.Module):  # a table cached per sequence length: a dynamic length cannot be a dict key
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            scale = {x.shape[1]: 0.5}
            return self.lin(x) * scale[x.shape[1]]

    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 5, 8)), m=SizeKeyed())
    assert result.ok and result.parity, str(result)
    entry = result.manifest.graph("m")
    assert "unhashable" in entry.tools["dynamic_error"]
    assert entry.tools["dynamic_given_up"] == [{"dim": "sequence", "inputs": {"x": [1]}}]
    assert entry.input("x").shape == ("batch", 5, 8)  # the batch stays dynamic
    x = torch.randn(3, 5, 8)
    want = h.m(x)
    with shapetrace.load(h, tmp_path / "o", backend="onnxruntime"):
        torch.testing.assert_close(h.m(x), want, atol=1e-5, rtol=1e-5)


def test_a_module_torch_export_cannot_trace_is_exported_static_by_the_tracing_exporters(tmp_path, record_export):
    class Checked(torch.nn.Module):  # data-dependent tests: torch.export fails even with static shapes, and their
        def __init__(self):  # answers differ from row to row, so they cannot be answered as recorded either
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            out = self.lin(x)
            for i in range(x.shape[0]):
                if bool(x[i].mean() > 0):
                    out[i] = out[i] * 2
            return out

    torch.manual_seed(0)
    m = Checked()
    x = torch.randn(2, 5, 8)
    x[0], x[1] = x[0].abs(), -x[1].abs()
    h, want, result = record_export(lambda h: h.m(x), m=m)
    assert result.ok and result.parity, str(result)
    entry = result.manifest.graph("m")
    assert "data-dependent" in entry.tools["torch_export_error"]
    assert "branches_as_recorded" not in entry.tools  # its one test line got both answers: not decided so
    assert entry.tools["onnx_exporter"] == "torch.onnx.export(dynamo=False)"
    assert entry.input("x").shape == (2, 5, 8) and not entry.dims and entry.outputs[0].shape == (2, 5, 8)
    with shapetrace.load(h, tmp_path / "o", backend="openvino"):
        torch.testing.assert_close(h.m(x), want, atol=1e-5, rtol=1e-5)


def test_a_dynamic_dim_that_breaks_parity_falls_back_to_static(tmp_path, record_export):
    class Branchy(torch.nn.Module):  # traced at batch 2, the batch-1 branch is never seen: no guard, wrong at 1
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            y = self.lin(x)
            return y * 2 if x.shape[0] == 1 else y * 3

    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(1, 4)), m=Branchy())
    assert result.ok and result.parity, str(result)  # the second, static export passes
    entry = result.manifest.graph("m")
    assert entry.dims == {} and entry.input("x").shape == (1, 4)
    assert entry.tools["static_fallback"]["given_up"] == ["batch"]
    assert "output" in entry.tools["static_fallback"]["because"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")) == []  # nothing left over
    x = torch.randn(1, 4)
    want = h.m(x)  # PyTorch: the batch-1 branch
    with shapetrace.load(h, tmp_path / "o", backend="onnxruntime"):
        torch.testing.assert_close(h.m(x), want)


def test_an_ir_openvino_cannot_read_from_onnx_is_converted_from_the_torch_module(tmp_path, monkeypatch,
                                                                                 record_export):
    import openvino as ov

    def unreadable(self, *args, **kwargs):  # OpenVINO's ONNX frontend missing an op (OpConversionFailure)
        raise RuntimeError("OpConversionFailure: Model wasn't fully converted")

    monkeypatch.setattr(ov.Core, "read_model", unreadable)
    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 8)),
                                 m=torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()),
                                 export_kwargs={"verify": False})
    entry = result.manifest.graph("m")
    assert entry.ok and entry.tools["openvino_from"] == "torch"
    assert "OpConversionFailure" in entry.tools["openvino_from_onnx_error"]
    assert (tmp_path / "o" / entry.file("openvino")).is_file() and entry.file("onnx")  # both files are there


def test_a_squeeze_pytorch_leaves_alone_does_not_make_an_onnx_file_onnxruntime_refuses(record_export):
    class Squeezer(torch.nn.Module):  # squeeze(1) on a dim of 16 is a no-op in PyTorch, a load error in ONNX Runtime
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x.squeeze(1))

    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 16, 4)), m=Squeezer())
    assert result.ok and result.parity, str(result.parity)
    entry = result.manifest.graph("m")
    assert entry.tools["onnx_noop_squeezes_removed"] == 1 and entry.input("x").shape == ("batch", "sequence", 4)
    assert "sequence != 1" in entry.constraints  # as torch.export traced it: at 1 the squeeze would not be a no-op
    assert any(c.backend == "onnxruntime" and c.input_set == "resized" for c in result.parity.checks)


def test_a_cache_object_the_torchscript_trace_does_not_return_is_dropped_and_load_gives_none(tmp_path,
                                                                                             record_export):
    from transformers import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    class Encoder(torch.nn.Module):  # like a transformers LLM used as a text encoder: no cache under jit tracing
        def __init__(self):
            super().__init__()
            self.k, self.v, self.out = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

        def forward(self, x):
            # data-dependent tests whose answers differ at one line: torch.export fails, and cannot take the
            # recorded answers either (shapetrace._export.branches); the TorchScript route takes it
            [bool(a > b) for a, b in ((x.max(), x.min()), (x.min(), x.max()))]
            cache = None
            if not torch.jit.is_tracing():
                cache = DynamicCache()
                cache.update(self.k(x)[:, None], self.v(x)[:, None], 0)
            return BaseModelOutputWithPast(last_hidden_state=self.out(x), cache=cache)

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    h, want, result = record_export(lambda h: h.m(x), m=Encoder())
    assert isinstance(want.cache, DynamicCache)  # the eager call does return the cache
    assert result.ok and result.parity, str(result)
    entry = result.manifest.graph("m")
    dropped = entry.dropped_outputs
    assert dropped["outputs"] == ["cache.layers.0.keys", "cache.layers.0.values"]
    assert [o.key for o in entry.outputs] == ["last_hidden_state"]
    cache_node = entry.output_tree["items"][entry.output_tree["keys"].index("cache")]
    assert cache_node["t"] == "const" and cache_node["value"] is None and cache_node["dropped"]
    with shapetrace.load(h, tmp_path / "o", backend="openvino"):
        got = h.m(x)
    assert isinstance(got, BaseModelOutputWithPast) and got.cache is None
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_a_cache_built_only_outside_tracing_is_built_in_the_trace_and_served_by_openvino(tmp_path, record_export):
    from transformers import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    class Decoder(torch.nn.Module):  # a transformers decoder's forward: ``use_cache and not is_tracing()``
        def __init__(self):
            super().__init__()
            self.k, self.v, self.out = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

        def forward(self, x, use_cache=True):
            # data-dependent tests whose answers differ at one line: torch.export fails, and cannot take the
            # recorded answers either (shapetrace._export.branches); the TorchScript route takes it
            [bool(a > b) for a, b in ((x.max(), x.min()), (x.min(), x.max()))]
            cache = None
            if use_cache and cache is None and not torch.jit.is_tracing():
                cache = DynamicCache()  # its layers start as torch.tensor([]) and grow by cat on dim -2
            if cache is not None:
                cache.update(self.k(x)[:, None], self.v(x)[:, None], 0)
            return BaseModelOutputWithPast(last_hidden_state=self.out(x), cache=cache)

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    h, want, result = record_export(lambda h: h.m(x), m=Decoder())
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result)
    assert "torch_export_error" in entry.tools and entry.dropped_outputs is None
    assert [o.key for o in entry.outputs] == ["last_hidden_state", "cache.layers.0.keys", "cache.layers.0.values"]
    with shapetrace.load(h, tmp_path / "o", backend="openvino"):
        got = h.m(x)
    assert isinstance(got.cache, DynamicCache)
    torch.testing.assert_close(got.cache.layers[0].keys, want.cache.layers[0].keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.cache.layers[0].values, want.cache.layers[0].values, atol=1e-5, rtol=1e-5)


def test_under_a_trace_only_the_use_cache_line_is_told_it_is_not_traced_and_sizes_round():
    from shapetrace._export.jittrace import traced_as_run

    seen = {}

    def f(x, use_cache=True):
        with traced_as_run():
            seen["cache"] = use_cache and not torch.jit.is_tracing()
            seen["other"] = torch.jit.is_tracing()
            seen["rounded"] = round(x.shape[1] * 0.5, 7)  # the tracer hands sizes out as 0-d tensors
            return torch.cat([torch.tensor([]), x], dim=-2)  # an empty cache layer grown by cat

    traced = torch.jit.trace(f, (torch.ones(1, 2, 3),), check_trace=False)
    assert seen == {"cache": True, "other": True, "rounded": 1.0}
    assert "aten::tensor" not in str(traced.graph) and torch.equal(traced(torch.ones(1, 4, 3)), torch.ones(1, 4, 3))
    assert torch.jit.is_tracing.__module__.startswith("torch") and torch.cat.__name__ == "cat"  # restored
    assert "__round__" not in vars(torch.Tensor)
    f(torch.ones(1, 2, 3))
    assert seen == {"cache": True, "other": False, "rounded": 1.0}  # outside a trace: nothing changed


def test_under_a_trace_grouped_query_attention_repeats_its_heads_for_the_torchscript_onnx_exporter(tmp_path):
    """``enable_gqa=True`` has no TorchScript ONNX translation; under a trace the key and value heads are repeated
    to the query's count instead (what the flag means), so the file exports and computes the same."""
    ort = pytest.importorskip("onnxruntime")
    from shapetrace._export.jittrace import traced_as_run

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            with traced_as_run():
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    torch.onnx.export(Attention(), (q, k, v), str(tmp_path / "a.onnx"), dynamo=False, input_names=["q", "k", "v"])
    got = ort.InferenceSession(str(tmp_path / "a.onnx")).run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
    np.testing.assert_allclose(got[0], Attention()(q, k, v).numpy(), atol=1e-5)
    assert torch.nn.functional.scaled_dot_product_attention.__module__ != "shapetrace._export.jittrace"  # restored


def test_under_a_trace_an_assignment_after_a_full_slice_converts_to_openvino_with_the_values_in_place():
    """``positions[:, b, mask] = values`` (multimodal rotary positions): OpenVINO's frontend writes such an
    ``index_put`` in the wrong order; under a trace every index is explicit and the IR computes what PyTorch does."""
    ov = pytest.importorskip("openvino")
    from shapetrace._export.jittrace import traced_as_run

    class Positions(torch.nn.Module):
        def forward(self, mask, values):
            with traced_as_run():
                positions = torch.zeros(3, 2, mask.shape[1], dtype=torch.long)
                for b in range(mask.shape[0]):
                    positions[:, b, mask[b]] = values[:, b, : int(mask[b].sum())]
                return positions

    mask = torch.tensor([[True, True, False, True, True], [False, True, True, True, True]])
    values = torch.arange(3 * 2 * 4).view(3, 2, 4)
    want = Positions()(mask, values)
    with torch.no_grad():
        model = ov.convert_model(torch.jit.trace(Positions(), (mask, values), check_trace=False))
    got = ov.Core().compile_model(model, "CPU")([mask.numpy(), values.numpy()])[0]
    np.testing.assert_array_equal(got, want.numpy())
    assert "__setitem__" not in vars(torch.Tensor)  # restored


def test_a_module_that_casts_itself_in_forward_exports_and_a_real_cast_still_converts():
    """``self.router = self.router.to(self.dtype)`` in ``forward``: under ``torch.export`` the swap of fake weights
    fails even when nothing changes; a cast to the dtype the weights have leaves the module alone there."""
    from shapetrace._export.jittrace import traced_as_run

    class CastsItself(torch.nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.router, self.dtype = torch.nn.Linear(4, 4), dtype

        def forward(self, x):
            with traced_as_run():
                self.router = self.router.to(self.dtype)
                return self.router(x.to(self.dtype))

    x = torch.randn(2, 4)
    m = CastsItself(torch.float32)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x))
    with torch.jit.optimized_execution(False):
        traced = torch.jit.trace(CastsItself(torch.float64), (x,), check_trace=False)
    assert traced.router.weight.dtype == torch.float64  # a cast that changes something still happens
    assert torch.nn.Module.to.__module__ == "torch.nn.modules.module"  # restored


class MaskedStep(torch.nn.Module):
    """A decoder step in miniature: its one new token attends to the cache and itself under a mask one longer than
    the cache, added to the scores (a BERT-style decoder's eager attention)."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(8, 8)

    def forward(self, x, mask, keys):
        keys = torch.cat([keys, x], dim=1)
        scores = self.q(x) @ keys.transpose(1, 2) + (1.0 - mask[:, None, :].float()) * -1e4
        return scores.softmax(-1) @ keys, keys


def test_a_step_that_fails_traced_at_two_tokens_keeps_them_at_one_and_its_cache_dynamic(record_export,
                                                                                         served_on_openvino):
    """Traced with the token doubled the step does not export (8 keys, a mask of 7); giving up the sequence group
    fixed the cache length with it. The token stays at 1 (``size1_static_failed_at_two``); torch.export then knows
    the mask only as ``past + 1``, a dim no input has alone, which is named (its example read off the sum), so
    that verify resizes the mask with the cache and load serves other cache lengths."""
    torch.manual_seed(0)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 0] = 0
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 1, 8), mask, torch.randn(2, 6, 8)), m=MaskedStep())
    assert result.ok and result.parity, str(result.parity)
    entry = result.manifest.graph("m")
    assert {"input": "x", "dims": [1]} in entry.tools["size1_static_failed_at_two"]
    assert "static_fallback" not in entry.tools and not entry.specialized
    past = entry.input("keys").shape[1]
    assert isinstance(past, str) and entry.input("mask").shape[1] == f"{past} + 1"
    assert entry.dims[past].example == 6
    got, want = served_on_openvino(h, result.out_dir, torch.randn(3, 1, 8), torch.ones(3, 12, dtype=torch.long),
                                   torch.randn(3, 11, 8))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


class PassesFeaturesThrough(torch.nn.Module):
    """A multimodal prompt graph in miniature: it is given image features and returns them beside its own output."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, ids, features):
        return {"logits": self.proj(features)[:, : ids.shape[1]] + ids[..., None], "image_features": features}


def test_an_output_that_is_an_input_passed_through_keeps_both_names_in_the_ir(tmp_path, record_export,
                                                                             served_on_openvino):
    ids, feats = torch.ones(2, 3), torch.randn(2, 5, 4)
    h, _, result = record_export(lambda h: h.m(ids, feats), m=PassesFeaturesThrough(),
                                 export_kwargs={"formats": ("openvino",)})
    entry = result.manifest.graph("m")
    assert result.ok and result.parity and entry.tools["openvino_from"] == "torch", str(result)
    import openvino as ov

    model = ov.Core().read_model(tmp_path / "o" / entry.file("openvino"))
    assert [set(p.get_names()) & {"ids", "features"} for p in model.inputs] == [{"ids"}, {"features"}]
    got, want = served_on_openvino(h, tmp_path / "o", ids, feats)
    torch.testing.assert_close(got["image_features"], want["image_features"])
    torch.testing.assert_close(got["logits"], want["logits"], atol=1e-5, rtol=1e-5)


def test_behaviour_fields_read_and_write_the_tools_keys_manifests_have_always_had():
    """``no_onnx``, ``complex_inputs``, ``index_bounds``, ``calls_without_proxy``, ``dropped_outputs`` are typed
    fields of a graph entry; in JSON they stay keys of ``tools``, so an older manifest loads and a new one reads as
    before, and ``tools`` itself holds diagnostics only."""
    from shapetrace.manifest import GraphEntry

    old = {"name": "m", "tools": {"no_onnx": "ONNX export failed: x", "complex_inputs": ["freqs"],
                                  "index_bounds": {"ids": 9}, "calls_without_proxy": 3, "opset": 18,
                                  "dropped_outputs": {"outputs": ["cache.layers.0.keys"], "why": "trace"}}}
    e = GraphEntry.from_json(old)
    assert (e.no_onnx, e.complex_inputs, dict(e.index_bounds), e.calls_without_proxy) == \
        ("ONNX export failed: x", ("freqs",), {"ids": 9}, 3)
    assert list(e.dropped_outputs["outputs"]) == ["cache.layers.0.keys"] and dict(e.tools) == {"opset": 18}
    assert e.to_json()["tools"] == old["tools"]
    plain = GraphEntry.from_json({"name": "m", "tools": {"opset": 18}})
    assert (plain.no_onnx, plain.complex_inputs, plain.calls_without_proxy, plain.dropped_outputs) == (None, (), 0, None)
    assert plain.to_json()["tools"] == {"opset": 18}
