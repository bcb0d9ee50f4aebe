"""Failing well: typed errors with a fix, state restored, nothing half-written; fuzzing of the data model."""

import dataclasses
import json
import os
import threading

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import shapetrace
from shapetrace._core import tree
from shapetrace.testing import EXAMPLES


# ------------------------------------------------------------------------------------------------ fuzzing
@dataclasses.dataclass
class Pair:
    left: object
    right: object


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool, torch.complex64]


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=4))
    t = torch.zeros(shape, dtype=torch.float64).uniform_(-3, 3) if shape and 0 not in shape else torch.zeros(shape)
    return t.to(dtype)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=20),
                    st.floats(allow_nan=False, allow_infinity=False))
leaves = st.one_of(scalars, tensors())
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(alphabet="abcxyz_", min_size=1, max_size=5), children, max_size=3),
        st.builds(Pair, children, children),
    ),
    max_leaves=8,
)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, Pair):
        return isinstance(b, Pair) and _same(a.left, b.left) and _same(a.right, b.right)
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_flatten_unflatten_round_trip_through_json(value):
    spec, leaves_ = tree.flatten(value, "x")
    spec_back = json.loads(json.dumps(spec))
    assert spec_back == spec
    assert _same(tree.unflatten(spec_back, leaves_), value)
    names = tree.tensor_names(spec)
    assert len(names) == len(set(names))  # flat names are unique
    assert all(isinstance(leaves_[n], torch.Tensor) for n in names)


class Echo(torch.nn.Module):
    def forward(self, x, extra=None):
        return {"y": x + 1, "extra": extra}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(values)
def test_signature_json_and_npz_round_trip(tmp_path_factory, extra):
    holder = {"echo": Echo()}
    with shapetrace.record(holder) as rec:
        holder["echo"](torch.ones(2, 3), extra=extra)
    out = tmp_path_factory.mktemp("sig")
    rec.save(out)
    back = shapetrace.Recording.load(out)
    assert back.to_json() == rec.to_json()
    (a, k), (a2, k2) = rec["['echo']"].example_inputs(), back["['echo']"].example_inputs()
    assert _same(k, k2) and _same(a, a2)


# ------------------------------------------------------------------------------------------------ bad input
def test_export_without_recording_says_how_to_record(tmp_path):
    pipe = EXAMPLES["sd"].build()
    with pytest.raises(shapetrace.ExportError, match=r"no recording for this StableDiffusionPipeline.*record"):
        shapetrace.export_all(pipe, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_export_after_a_module_was_replaced_is_refused(tmp_path):
    pipe = EXAMPLES["sd"].build()
    with shapetrace.record(pipe) as rec:
        EXAMPLES["sd"].run(pipe)
    pipe.__dict__["unet"] = torch.nn.Linear(2, 2)
    with pytest.raises(shapetrace.ExportError, match=r"'unet' is now a Linear, but a UNet2DConditionModel was "
                                                     r"recorded; record the object again"):
        shapetrace.export_all(pipe, tmp_path / "o", recording=rec)
    assert not (tmp_path / "o").exists()


def test_export_to_a_file_or_an_unwritable_folder(tmp_path):
    pipe = EXAMPLES["text-classification"].build()
    with shapetrace.record(pipe) as rec:
        EXAMPLES["text-classification"].run(pipe)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(shapetrace.ExportError, match="is a file; pass a directory"):
        shapetrace.export_all(pipe, f, recording=rec)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: nothing to test here
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(shapetrace.ExportError, match="cannot write to"):
            shapetrace.export_all(pipe, locked / "o", recording=rec)
    finally:
        locked.chmod(0o700)


def test_unknown_graph_and_format_are_refused(tmp_path):
    pipe = EXAMPLES["text-classification"].build()
    with shapetrace.record(pipe) as rec:
        EXAMPLES["text-classification"].run(pipe)
    with pytest.raises(shapetrace.ExportError, match=r"graphs=\['unet'\] not recorded; recorded graphs: model"):
        shapetrace.export_all(pipe, tmp_path / "o", graphs=["unet"])
    with pytest.raises(shapetrace.ExportError, match="choose from"):
        shapetrace.export_all(pipe, tmp_path / "o", formats=("tflite",))
    with pytest.raises(shapetrace.ExportError, match="dynamic='sometimes' is not understood"):
        shapetrace.prepare(pipe, "model", dynamic="sometimes")


@pytest.mark.parametrize("content, match", [
    ("{not json", "is not a readable signatures file"),
    ('{"graphs": []}', "no format_version"),
    ('{"format_version": 99, "graphs": []}', "format_version 99, newer than this shapetrace reads"),
    ('{"format_version": 1, "graphs": [{"name": "x"}]}', "graph entry 'x' is malformed"),
])
def test_corrupt_or_future_signatures_are_refused(tmp_path, content, match):
    (tmp_path / "signatures.json").write_text(content)
    with pytest.raises(shapetrace.SignatureFileError, match=match):
        shapetrace.Recording.load(tmp_path)


def test_missing_signatures_file(tmp_path):
    with pytest.raises(shapetrace.SignatureFileError, match="not found: is this a folder written by shapetrace"):
        shapetrace.Recording.load(tmp_path)


def test_truncated_signatures_file(tmp_path):
    pipe = EXAMPLES["text-classification"].build()
    with shapetrace.record(pipe) as rec:
        EXAMPLES["text-classification"].run(pipe)
    rec.save(tmp_path)
    text = (tmp_path / "signatures.json").read_text()
    (tmp_path / "signatures.json").write_text(text[: len(text) // 2])
    with pytest.raises(shapetrace.SignatureFileError, match="not a readable signatures file"):
        shapetrace.Recording.load(tmp_path)


# ------------------------------------------------------------------------------------------------ faults
def test_two_records_in_two_threads_do_not_mix():
    ex = EXAMPLES["sd"]
    pipes = [ex.build(), ex.build()]
    recs, errors = {}, []
    barrier = threading.Barrier(2)

    def work(i, size):
        try:
            with shapetrace.record(pipes[i]) as rec:
                barrier.wait()
                for _ in range(2):
                    ex.run(pipes[i], height=size, width=size)
            recs[i] = rec
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(0, 64)), threading.Thread(target=work, args=(1, 96))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert recs[0]["unet"].inputs["sample"].shapes_seen == ((2, 4, 8, 8),)
    assert recs[1]["unet"].inputs["sample"].shapes_seen == ((2, 4, 12, 12),)
    assert recs[0]["unet"].num_calls == recs[1]["unet"].num_calls == 4
    assert all(type(p.unet) is not shapetrace.RecordingProxy for p in pipes)


@pytest.fixture
def flattener_registry():
    """shapetrace's flattener registry, put back as it was after the test: what a test registers leaves no trace."""
    registry = tree._REGISTRY
    saved = dict(registry)
    yield registry
    with tree._LOCK:
        registry.clear()
        registry.update(saved)


def test_unknown_output_type_is_recorded_by_type_and_export_names_the_fix(tmp_path, flattener_registry):
    class Box:  # __slots__: not flattened by its attributes (a plain class holding tensors would be)
        __slots__ = ("t",)

        def __init__(self, t):
            self.t = t

    class Boxer(torch.nn.Module):
        def forward(self, x):
            return Box(x)

    holder = Holder(Boxer())
    with shapetrace.record(holder) as rec:
        holder.m(torch.ones(1))
    node = rec["m"].output_tree
    assert node["t"] == "opaque" and node["type"].endswith("Box") and node["tensors"] is True
    with pytest.raises(shapetrace.FlattenError, match=r"returns a .*Box, which holds tensors.*register_flattener"):
        shapetrace.prepare(holder, "m", recording=rec)
    # registering a flattener fixes it
    shapetrace.register_flattener(Box, lambda b: ({"t": b.t}, None), lambda cls, f, ctx: cls(f["t"]))
    assert tree.qualname(Box) in flattener_registry  # removed again by the fixture
    with shapetrace.record(holder) as rec:
        holder.m(torch.ones(1))
    assert list(rec["m"].outputs) == ["t"]
    plan = shapetrace.prepare(holder, "m", recording=rec)
    assert plan.output_names == ("t",)


class Holder:
    def __init__(self, m):
        self.m = m


def test_record_inside_a_load_block_is_refused(tmp_path):
    ex = EXAMPLES["text-classification"]
    pipe = ex.build()
    with shapetrace.record(pipe) as rec:
        ex.run(pipe)
    shapetrace.export_all(pipe, tmp_path / "o", recording=rec, formats=("openvino",), progress=False, verify=False)
    with shapetrace.load(pipe, tmp_path / "o"):
        with pytest.raises(shapetrace.RecordingError, match="served by shapetrace.load"):
            with shapetrace.record(pipe):
                pass
    assert type(pipe.model) is not shapetrace.RecordingProxy
