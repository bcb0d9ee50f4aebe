"""Calls that reach a module by another way than the path record() swapped: a second path to the same module, the
module calling itself from a method that is not a graph (``generate``), and methods that loop over module calls."""

from __future__ import annotations

import warnings

import pytest
import torch

import shapetrace
from shapetrace import RecordingProxy
from shapetrace._serve.runtime import PyTorchFallbackWarning, RuntimeProxy


class Holder:
    pass


class Stepper(torch.nn.Module):
    """``decode`` calls each submodule once (one graph); ``generate`` calls ``step`` in a loop (a loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 8)
        self.step = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(self.embed(x))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.step(self.embed(x)))

    def generate(self, x: torch.Tensor, steps: int = 3) -> torch.Tensor:
        h = self.embed(x)
        for _ in range(steps):
            h = torch.tanh(self.step(h))
        return h

    def _repeat(self, x: torch.Tensor, times: int) -> torch.Tensor:  # private: forwarded, like a framework method
        for _ in range(times):
            x = self(x[..., :4])
        return x


def _holder_with_two_paths() -> tuple[Holder, torch.nn.Module]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    h = Holder()
    h.a = lin
    h.inner = Holder()
    h.inner.lin = lin
    return h, lin


def test_a_module_reached_by_two_paths_is_one_graph_recorded_from_both(tmp_path):
    h, lin = _holder_with_two_paths()
    with shapetrace.record(h) as rec:
        assert type(h.a) is RecordingProxy and h.inner.lin is h.a  # one proxy at both paths
        h.inner.lin(torch.randn(2, 4))
        h.a(torch.randn(5, 4))
    assert list(rec.graphs) == ["a"] and rec["a"].num_calls == 2
    assert rec["a"].inputs["input"].shapes_seen == ((2, 4), (5, 4))
    assert h.a is lin and h.inner.lin is lin  # both restored
    result = shapetrace.export_all(h, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    x = torch.randn(7, 4)
    ref = lin(x)
    with shapetrace.load(h, tmp_path / "o", backend="onnxruntime") as rt:
        assert type(h.inner.lin) is RuntimeProxy and h.inner.lin is h.a  # served at both paths
        torch.testing.assert_close(h.inner.lin(x), ref)
        # the module object itself, called past the object (no recorded call did that): PyTorch, not counted --
        # load must not serve whatever else holds the module (tools.calls_without_proxy decides)
        assert torch.equal(lin(x), ref) and "forward" not in lin.__dict__
        assert {s.graph: s.calls for s in rt.stats()} == {"a": 1}
    assert h.a is lin and h.inner.lin is lin and "forward" not in lin.__dict__


def test_a_module_calling_itself_from_a_forwarded_method_is_recorded_and_served(tmp_path):
    torch.manual_seed(0)
    h = Holder()
    h.m = Stepper()
    x = torch.randn(2, 4)
    with shapetrace.record(h) as rec:
        want = h.m._repeat(x, 3)  # a private method: forwarded, and inside it self(...) on the real module
    assert list(rec.graphs) == ["m"] and rec["m"].num_calls == 3
    shapetrace.export_all(h, tmp_path / "o", progress=False, verify=False)
    with shapetrace.load(h, tmp_path / "o", backend="openvino") as rt:
        torch.testing.assert_close(h.m._repeat(x, 3), want, atol=1e-5, rtol=1e-5)
        assert {s.graph: s.calls for s in rt.stats()} == {"m": 3}


def test_a_method_that_loops_is_not_a_graph_its_module_calls_are(tmp_path):
    torch.manual_seed(0)
    h = Holder()
    h.m = Stepper()
    with shapetrace.record(h) as rec:
        h.m.decode(torch.randn(2, 4))  # each submodule once: the method is the graph
        h.m.generate(torch.randn(2, 4), steps=3)  # step called 3 times: a loop
    assert sorted(rec.graphs) == ["m.decode", "m.embed", "m.step"]
    assert rec["m.step"].num_calls == 3 and rec["m.embed"].num_calls == 1 and rec["m.decode"].num_calls == 1
    assert rec["m.step"].module_path == "m.step" and rec["m.step"].method == "forward"
    result = shapetrace.export_all(h, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    x = torch.randn(3, 4)  # another batch, more steps than recorded
    want_gen, want_dec = h.m.generate(x, steps=5), h.m.decode(x)
    with shapetrace.load(h, tmp_path / "o", backend="onnxruntime") as rt, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.testing.assert_close(h.m.generate(x, steps=5), want_gen, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h.m.decode(x), want_dec, atol=1e-5, rtol=1e-5)
        calls = {s.graph: (s.ran_on, s.calls) for s in rt.stats()}
    assert calls["m.step"] == ("onnxruntime:CPU", 5) and calls["m.embed"] == ("onnxruntime:CPU", 1)
    assert calls["m.decode"] == ("onnxruntime:CPU", 1) and calls["m.generate"] == ("torch", 1)
    assert any(issubclass(x.category, PyTorchFallbackWarning) and "m.generate" in str(x.message) for x in w)
    assert type(h.m) is Stepper and type(h.m.step) is torch.nn.Linear and "forward" not in h.m.step.__dict__


def test_gpt2_generate_without_a_cache_is_token_identical_at_another_prompt_length(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    h = Holder()
    h.model = transformers.GPT2LMHeadModel(config).eval()
    kw = dict(do_sample=False, use_cache=False, pad_token_id=0)
    with shapetrace.record(h) as rec:
        h.model.generate(torch.randint(1, 96, (1, 5)), max_new_tokens=4, **kw)
    assert list(rec.graphs) == ["model"] and rec["model"].num_calls == 4  # generate -> self(...) per token
    assert 1 in rec["model"].inputs["input_ids"].varying_dims
    result = shapetrace.export_all(h, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    prompt = torch.randint(1, 96, (1, 9))
    want = h.model.generate(prompt, max_new_tokens=7, **kw)
    for backend in ("openvino", "onnxruntime"):
        with shapetrace.load(h, tmp_path / "o", backend=backend) as rt:
            got = h.model.generate(prompt, max_new_tokens=7, **kw)
            assert {s.graph: s.calls for s in rt.stats()} == {"model": 7}
        assert torch.equal(got, want), (backend, got, want)


class Stacked(torch.nn.Module):
    """``generate`` loops over a ``ModuleList``: its items are graphs named as torch names them (``m.steps.0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    def generate(self, x: torch.Tensor, rounds: int = 2) -> torch.Tensor:
        for _ in range(rounds):
            for step in self.steps:
                x = torch.tanh(step(x))
        return x


def test_a_loop_over_a_module_list_exports_and_serves_its_items(tmp_path):
    """The items' paths come from ``named_modules()`` (``m.steps.0``); export resolved only ``m.steps[0]`` and
    raised for the whole object."""
    torch.manual_seed(0)
    h = Holder()
    h.m = Stacked()
    with shapetrace.record(h) as rec:
        h.m.generate(torch.randn(2, 4))
    assert sorted(rec.graphs) == ["m.steps.0", "m.steps.1"]
    result = shapetrace.export_all(h, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    x = torch.randn(3, 4)
    want = h.m.generate(x, rounds=3)
    with shapetrace.load(h, tmp_path / "o", backend="onnxruntime") as rt:
        torch.testing.assert_close(h.m.generate(x, rounds=3), want, atol=1e-5, rtol=1e-5)
        calls = {s.graph: (s.ran_on, s.calls) for s in rt.stats() if s.graph.startswith("m.steps")}
    assert calls == {"m.steps.0": ("onnxruntime:CPU", 3), "m.steps.1": ("onnxruntime:CPU", 3)}
