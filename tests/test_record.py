"""record() on every offline pipeline: paths, graph names, input names / shapes / dtypes, transparency."""

import copy
import functools
import inspect
import json

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import shapetrace
from shapetrace.testing import EXAMPLES, OPENPOSE_INPUT_SHAPE

NAMES = list(EXAMPLES)


def _as_arrays(out):
    """The comparable payload of a pipeline output (images / np arrays / dicts of scores)."""
    if hasattr(out, "images"):
        return np.asarray(out.images)
    if isinstance(out, list):
        return json.dumps(out, sort_keys=True, default=str)
    return np.asarray(out)


class Capture:
    """Independent ground truth: forward pre-hooks and class-level method wrappers count every real call."""

    def __init__(self, obj, graphs, monkeypatch):
        self.calls = {}
        self.handles = []
        modules = shapetrace.find_modules(obj)
        for graph in graphs:
            path, _, method = graph.rpartition(".")
            if path in modules and method and not graph in modules:
                self._wrap_method(graph, type(modules[path]), method, monkeypatch)
            else:
                self.handles.append(modules[graph].register_forward_pre_hook(
                    functools.partial(self._hook, graph), with_kwargs=True))

    def _hook(self, graph, module, args, kwargs):
        self.calls.setdefault(graph, []).append((args, kwargs, type(module).forward))

    def _wrap_method(self, graph, cls, method, monkeypatch):
        original = getattr(cls, method)
        capture = self

        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            capture.calls.setdefault(graph, []).append((args, kwargs, original))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, wrapper)

    def close(self):
        for h in self.handles:
            h.remove()

    def first_call_tensors(self, graph):
        """{top-level parameter name: [(shape, dtype) of every tensor leaf under it]} of the first call."""
        args, kwargs, fn = self.calls[graph][0]
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        named = dict(zip(params, args))
        named.update(kwargs)
        return {k: [(tuple(t.shape), t.dtype) for t in pytree.tree_leaves(v) if isinstance(t, torch.Tensor)]
                for k, v in named.items()}


@pytest.fixture(params=NAMES)
def example(request):
    return EXAMPLES[request.param]


def test_expected_module_paths_are_found(example):
    obj = example.build()
    assert sorted(shapetrace.find_modules(obj)) == sorted(example.expected_modules)


def test_recording_matches_what_the_pipeline_really_passes(example, monkeypatch):
    obj = example.build()
    cap = Capture(obj, example.expected_graphs, monkeypatch)
    try:
        with shapetrace.record(obj) as rec:
            example.run(obj)
    finally:
        cap.close()
    assert sorted(rec.graphs) == sorted(example.expected_graphs)
    for name, g in rec.graphs.items():
        assert g.num_calls == len(cap.calls[name]), name
        truth = cap.first_call_tensors(name)
        for param, leaves in truth.items():
            recorded = [(s.shape, s.dtype) for n, s in g.inputs.items() if n == param or n.startswith(param + ".")]
            assert recorded == leaves, (name, param)
        assert len(g.inputs) == sum(len(v) for v in truth.values())
        assert g.outputs, name
        args, kwargs = g.example_inputs()
        flat = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        assert [tuple(t.shape) for t in flat] == [s.shape for s in g.inputs.values()]
        assert all(t.device.type == "cpu" for t in flat)


def test_output_is_bit_identical_with_and_without_record(example):
    obj = example.build()
    plain = _as_arrays(example.run(obj))
    with shapetrace.record(obj):
        recorded = _as_arrays(example.run(obj))
    again = _as_arrays(example.run(obj))
    if isinstance(plain, str):
        assert plain == recorded == again
    else:
        assert np.array_equal(plain, recorded) and np.array_equal(plain, again)


def test_originals_and_config_restored_even_when_the_pipeline_raises(example):
    obj = example.build()
    before = dict(shapetrace.find_modules(obj))
    config = getattr(obj, "config", None)
    config_copy = copy.deepcopy(dict(config)) if config is not None else None
    attrs = dict(vars(obj))

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with shapetrace.record(obj):
            for m in shapetrace.find_modules(obj).values():
                assert type(m) is shapetrace.RecordingProxy
            raise Boom()
    after = shapetrace.find_modules(obj)
    assert all(after[k] is before[k] for k in before)
    assert all(type(m) is not shapetrace.RecordingProxy for m in after.values())
    assert vars(obj).keys() == attrs.keys() and all(vars(obj)[k] is attrs[k] for k in attrs)
    if config is not None:
        assert obj.config is config and dict(obj.config) == config_copy


def test_originals_restored_after_keyboard_interrupt_inside_a_module_call():
    ex = EXAMPLES["sd"]
    pipe = ex.build()
    unet = pipe.unet
    original_forward = type(unet).forward

    def interrupt(self, *a, **k):
        raise KeyboardInterrupt

    type(unet).forward = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            with shapetrace.record(pipe):
                ex.run(pipe)
    finally:
        type(unet).forward = original_forward
    assert pipe.unet is unet


def test_controlnet_is_transparent_inside_the_block():
    from diffusers import ControlNetModel

    pipe = EXAMPLES["controlnet"].build()
    with shapetrace.record(pipe) as rec:
        proxy = pipe.controlnet
        assert isinstance(proxy, ControlNetModel) and isinstance(proxy, torch.nn.Module)
        assert type(proxy) is shapetrace.RecordingProxy
        assert proxy.config is proxy.__wrapped__.config and proxy.dtype == torch.float32
        assert proxy.device.type == "cpu"
        assert proxy.to("cpu") is proxy and proxy.eval() is proxy
        assert repr(proxy) == "<RecordingProxy 'controlnet' for ControlNetModel, 0 calls>"
        proxy.some_flag = 3
        assert proxy.__wrapped__.some_flag == 3
        with pytest.raises(shapetrace.RecordingError, match="cannot deepcopy"):
            copy.deepcopy(proxy)
        EXAMPLES["controlnet"].run(pipe)
        assert repr(proxy) == "<RecordingProxy 'controlnet' for ControlNetModel, 2 calls>"
    assert rec.graphs["controlnet"].constants["conditioning_scale"] == 1.0
    assert shapetrace.recording_for(pipe) is rec


def test_flat_names_of_nested_inputs_and_named_outputs():
    pipe = EXAMPLES["controlnet"].build()
    with shapetrace.record(pipe) as rec:
        EXAMPLES["controlnet"].run(pipe)
    unet, cn = rec["unet"], rec["controlnet"]
    assert [n for n in unet.inputs if n.startswith("down_block_additional_residuals.")] == [
        f"down_block_additional_residuals.{i}" for i in range(4)]
    assert "mid_block_additional_residual" in unet.inputs
    assert list(unet.outputs) == ["sample"]  # return_dict=False tuple, named from UNet2DConditionOutput
    assert list(cn.outputs)[-1] == "mid_block_res_sample"
    assert list(cn.outputs)[0] == "down_block_res_samples.0"
    assert list(rec["text_encoder"].outputs)[:2] == ["last_hidden_state", "pooler_output"]
    assert unet.module_path == "unet" and rec["vae.decode"].method == "decode"


def test_sdxl_records_added_cond_kwargs_by_key():
    ex = EXAMPLES["sdxl"]
    pipe = ex.build()
    with shapetrace.record(pipe) as rec:
        ex.run(pipe)
    assert {"added_cond_kwargs.text_embeds", "added_cond_kwargs.time_ids"} <= set(rec["unet"].inputs)


def test_openpose_body_model_input_shape():
    ex = EXAMPLES["openpose"]
    det = ex.build()
    with shapetrace.record(det) as rec:
        ex.run(det)
    assert list(rec.graphs) == ["body_estimation.model"]
    (spec,) = rec["body_estimation.model"].inputs.values()
    assert spec.shape == OPENPOSE_INPUT_SHAPE == (1, 3, 184, 136)


def test_two_runs_at_different_sizes_mark_exactly_the_dims_that_changed():
    ex = EXAMPLES["sd"]
    pipe = ex.build()
    with shapetrace.record(pipe) as rec:
        ex.run(pipe, height=64, width=64)
        ex.run(pipe, height=64, width=96)
    sample = rec["unet"].inputs["sample"]
    assert sample.varying_dims == (3,)
    assert set(sample.shapes_seen) == {(2, 4, 8, 8), (2, 4, 8, 12)}
    assert rec["unet"].inputs["encoder_hidden_states"].varying_dims == ()
    assert rec["vae.decode"].outputs["sample"].varying_dims == (3,)
    assert str(sample) == "float32[2, 4, 8, 8*]"


def test_batch_change_is_marked_too():
    ex = EXAMPLES["text-classification"]
    pipe = ex.build()
    with shapetrace.record(pipe) as rec:
        ex.run(pipe)
        ex.run(pipe, text="a much longer sentence about a chef in the kitchen")
    assert rec["model"].inputs["input_ids"].varying_dims == (1,)


def test_save_load_round_trip(tmp_path):
    ex = EXAMPLES["controlnet"]
    pipe = ex.build()
    with shapetrace.record(pipe) as rec:
        ex.run(pipe)
    rec.save(tmp_path / "sig")
    assert (tmp_path / "sig" / "signatures.json").exists()
    assert (tmp_path / "sig" / "vae.decode.inputs.npz").exists()
    with np.load(tmp_path / "sig" / "unet.inputs.npz") as z:
        assert set(z.files) == set(rec["unet"].inputs)
    back = shapetrace.Recording.load(tmp_path / "sig")
    assert back.to_json() == rec.to_json()
    assert str(back) == str(rec)
    for name, g in rec.graphs.items():
        a, k = g.example_inputs()
        a2, k2 = back[name].example_inputs()
        leaves = [x for x in pytree.tree_leaves((a, k)) if isinstance(x, torch.Tensor)]
        leaves2 = [x for x in pytree.tree_leaves((a2, k2)) if isinstance(x, torch.Tensor)]
        assert len(leaves) == len(leaves2) and all(torch.equal(x, y) for x, y in zip(leaves, leaves2))


def test_table_lists_graphs_inputs_and_outputs():
    ex = EXAMPLES["sd"]
    pipe = ex.build()
    with shapetrace.record(pipe) as rec:
        ex.run(pipe)
    text = str(rec)
    lines = text.splitlines()
    assert lines[0].split() == ["graph", "calls", "inputs", "outputs"]
    for name, g in rec.graphs.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[1] == str(g.num_calls)
    assert "sample: float32[2, 4, 8, 8]" in text


def test_nested_record_on_the_same_object_is_refused():
    ex = EXAMPLES["sd"]
    pipe = ex.build()
    with shapetrace.record(pipe):
        with pytest.raises(shapetrace.RecordingError, match="cannot be nested"):
            with shapetrace.record(pipe):
                pass
    assert type(pipe.unet) is not shapetrace.RecordingProxy


def test_record_on_object_without_modules_is_refused():
    with pytest.raises(shapetrace.ModuleNotFoundInObject, match="no torch.nn.Module found"):
        with shapetrace.record({"a": 1}):
            pass


def test_include_limits_what_is_recorded():
    ex = EXAMPLES["sd"]
    pipe = ex.build()
    with shapetrace.record(pipe, include=["unet"]) as rec:
        ex.run(pipe)
    assert list(rec.graphs) == ["unet"]


def test_a_recording_keeps_no_object_alive_even_one_that_refuses_weak_references():
    """``export_all(d)`` finds the recording of a dict of modules, but nothing shapetrace holds keeps the dict (or
    the modules in it) alive once the user lets go of it."""
    import gc
    import weakref

    d = {"net": torch.nn.Linear(2, 2)}
    with shapetrace.record(d):
        d["net"](torch.randn(1, 2))
    assert len(shapetrace.recording_for(d).graphs) == 1
    module = weakref.ref(d["net"])
    del d
    gc.collect()
    assert module() is None
    with pytest.raises(shapetrace.RecordingError):
        shapetrace.recording_for({"net": torch.nn.Linear(2, 2)})  # another dict: no recording
