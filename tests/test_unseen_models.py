"""Mechanisms found on models nobody tuned to (transformers' own model tests as a corpus), each on a small model:
a loop over the positions ``nonzero()`` selected (mixture-of-experts dispatch; a sentinel class, an emptiness test in
its body), a number that follows a dim, an average pool wider than its map, a mask that follows a size-1 cache, a
float mask as long as the prompt."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shapetrace._export import loops


class Dispatch(torch.nn.Module):
    """Mixture-of-experts dispatch as transformers writes it: one iteration per expert some token chose, that
    expert's tokens selected again inside the body, a sentinel class no token ever chooses skipped by value, and the
    expert named from the position (``f"e{position}"``)."""

    def __init__(self, experts: int = 4, width: int = 8, count_visits: bool = False, skip_empty: bool = False):
        super().__init__()
        self.n, self.count_visits, self.skip_empty = experts, count_visits, skip_empty
        self.router = torch.nn.Linear(width, experts)
        self.experts = torch.nn.ModuleDict({f"e{i}": torch.nn.Linear(width, width) for i in range(experts)})

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        weights, chosen = self.router(h).softmax(-1).topk(1, dim=-1)
        mask = F.one_hot(chosen, self.n + 1).permute(2, 1, 0)  # experts and a sentinel, slot, token
        out = torch.zeros_like(h)
        for expert in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            if expert[0] == self.n:
                continue
            slot, token = torch.where(mask[expert[0]])
            if self.skip_empty and token.numel() == 0:  # a count only the data knows
                continue
            out.index_add_(0, token, self.experts[f"e{expert[0]}"](h[token]) * weights[token, slot, None])
            if self.count_visits:  # not a no-op for an expert nobody chose: widening would change the result
                out[0, 0] += 1.0
        return out.reshape(x.shape)


def test_every_position_visits_the_positions_nonzero_left_out_and_only_inside_the_block():
    picked = torch.tensor([False, True, False, True])
    with loops.every_position():
        assert [int(p) for p in picked.nonzero()] == [0, 1, 2, 3]
        assert [p.tolist() for p in torch.nonzero(torch.eye(2))] == [[0, 0], [0, 1], [1, 0], [1, 1]]
        assert f"{picked.nonzero()[0][0]}" == "1"  # a 0-d integer tensor formats as its number
    assert [int(p) for p in picked.nonzero()] == [1, 3]
    assert torch.Tensor.__iter__.__module__ == "torch._tensor" and torch.nonzero.__module__ != __name__


def test_a_dispatch_loop_exports_dynamic_and_openvino_serves_other_sizes(record_export, served_on_openvino):
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: (h.m(torch.randn(2, 5, 8)), h.m(torch.randn(1, 3, 8))), m=Dispatch())
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result)
    assert "widened_loops" in entry.tools and "torch_export_error" not in entry.tools
    assert "GuardOnDataDependentSymNode" in entry.tools["widened_loops"]  # why the loop as written cannot export
    assert {d.name for d in entry.dims.values()} >= {"batch", "sequence"}
    for size in [(3, 9, 8), (1, 1, 8)]:  # one token chooses one expert: three loop positions find nobody
        got, want = served_on_openvino(h, result.out_dir, torch.randn(*size))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_an_emptiness_test_inside_a_widened_loop_is_decided_not_empty_and_unchosen_experts_add_nothing(
        record_export, served_on_openvino):
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 5, 8)), m=Dispatch(skip_empty=True))
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result)
    assert "widened_loops" in entry.tools and "torch_export_error" not in entry.tools
    for size in [(3, 9, 8), (1, 1, 8)]:  # one token: three experts whose selection is empty
        got, want = served_on_openvino(h, result.out_dir, torch.randn(*size))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_loop_whose_body_acts_for_unchosen_positions_is_not_widened(record_export):
    torch.manual_seed(0)
    m = Dispatch(count_visits=True)
    x = torch.randn(1, 2, 8)  # two tokens, four experts: at least two experts nobody chose
    assert loops.iterates_selection(lambda: m(x)) and not loops.same_when_widened(lambda: m(x))
    _, _, result = record_export(lambda h: h.m(x), m=m)
    entry = result.manifest.graph("m")
    assert "widened_loops" not in entry.tools and "torch_export_error" in entry.tools


class StackedDispatch(torch.nn.Module):
    """Dispatch over stacked expert weights with a "no expert" class in the one-hot that routing never picks and the
    body does not skip: widened, the loop reaches an expert that does not exist (``IndexError``)."""

    def __init__(self, experts: int = 4, width: int = 8):
        super().__init__()
        self.n = experts
        self.router = torch.nn.Linear(width, experts)
        self.w = torch.nn.Parameter(torch.randn(experts, width, width) / width**0.5)

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        weights, chosen = self.router(h).softmax(-1).topk(2, dim=-1)
        mask = F.one_hot(chosen, self.n + 1).permute(2, 1, 0)
        out = torch.zeros_like(h)
        for expert in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            slot, token = torch.where(mask[expert[0]])
            out.index_add_(0, token, (h[token] @ self.w[expert[0]]) * weights[token, slot, None])
        return out.reshape(x.shape)


def test_a_widened_position_the_module_cannot_process_is_left_out(record_export, served_on_openvino):
    """The sentinel class raises IndexError when visited: no call the module answers selects it, so the widened
    loop leaves it out (``tools.widened_loops_skipped``) and the export stays dynamic."""
    torch.manual_seed(0)
    m = StackedDispatch()
    x = torch.randn(2, 5, 8)
    with pytest.raises(IndexError), loops.every_position():
        m(x)
    skip = loops.positions_to_skip(lambda: m(x))
    assert skip is not None and [(shape, at) for _, shape, at in skip] == [((5,), (4,))]
    h, _, result = record_export(lambda h: h.m(x), m=m)
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result)
    assert [(s["shape"], s["position"]) for s in entry.tools["widened_loops_skipped"]] == [([5], [4])]
    assert entry.tools["widened_loops_skipped"][0]["line"].startswith(__file__)
    for size in [(3, 9, 8), (1, 1, 8)]:
        got, want = served_on_openvino(h, result.out_dir, torch.randn(*size))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class KeepsLast(torch.nn.Module):
    """A decoder's ``next_sequence_length``: how many of the last positions to compute, equal to the prompt's
    length at the prefill."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x, keep: int):
        return self.proj(x[:, -keep:])


def test_a_number_equal_to_a_dynamic_dim_follows_it_and_a_number_that_does_not_is_refused(record_export):
    import shapetrace
    from shapetrace.errors import RuntimeMismatchError

    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 7, 8), 7), m=KeepsLast())
    assert result.ok and result.parity, str(result)
    keep = result.manifest.graph("m").input_tree["params"][1]["node"]
    assert keep["value"] == 7 and keep["follows"] == "x.1"
    x = torch.randn(3, 10, 8)
    with torch.no_grad():
        want = h.m(x, 10)
        with shapetrace.load(h, result.out_dir, backend="openvino") as rt:
            got = h.m(x, 10)
            assert [(s.graph, s.ran_on, s.calls) for s in rt.stats()] == [("m", "openvino:CPU", 1)]
            with pytest.raises(RuntimeMismatchError, match="keep=4, but the graph takes it as the size of x's dim 1"):
                h.m(x, 4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class PooledHead(torch.nn.Module):
    """An EfficientNet-style head: a 1x1 map pooled by a window as wide as its channels, then classified."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=4)
        self.pool = torch.nn.AvgPool2d(16, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


def test_an_average_pool_wider_than_its_map_is_exported_as_its_mean_and_openvino_runs_it(record_export,
                                                                                         served_on_openvino):
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randn(2, 3, 8, 8)), m=PooledHead())
    assert result.ok and result.parity, str(result)
    assert "static_fallback" not in result.manifest.graph("m").tools
    got, want = served_on_openvino(h, result.out_dir, torch.randn(3, 3, 12, 12))  # a 3x3 map: still one window
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class DecodeStep(torch.nn.Module):
    """An encoder-decoder's decode step in miniature: per-channel token ids (rank 3: their step dim stays 1), a
    cache, a mask as long as the cache and the new token."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.q = torch.nn.Linear(8, 8)

    def forward(self, ids, mask, keys):
        x = self.emb(ids).sum(2)
        keys = torch.cat([keys, x], dim=1)
        scores = self.q(x) @ keys.transpose(1, 2) + (1.0 - mask[:, None, :].float()) * -1e4
        return scores.softmax(-1) @ keys, keys


def test_a_mask_that_follows_a_size_one_cache_is_traced_longer_with_it_and_every_later_step_is_served(
        record_export, served_on_openvino):
    """The first step's cache of 1, traced at 2, broke the guard mask == cache + 1 on the recorded call; kept at 1,
    it fixed the mask at 2 and every later step was refused. Traced at 2 with the mask one longer, both stay
    dynamic (the mask named as the cache + 1) and the recorded step (a cache of 1) is still in range."""
    torch.manual_seed(0)
    ids = torch.randint(0, 16, (2, 1, 3))
    h, _, result = record_export(
        lambda h: [h.m(ids, torch.ones(2, k + 1, dtype=torch.long), torch.randn(2, k, 8)) for k in (1, 2, 3)],
        m=DecodeStep())
    assert result.ok and result.parity, str(result)
    entry = result.manifest.graph("m")
    assert entry.tools["size1_grown_with"]["grown"] == [{"input": "mask", "dims": [1], "by": 1}]
    assert not entry.specialized
    cache_dim = entry.input("keys").shape[1]
    assert entry.input("mask").shape[1] == f"{cache_dim} + 1" and entry.dims[cache_dim].min == 1
    for k in (1, 6):
        got, want = served_on_openvino(h, result.out_dir, torch.randint(0, 16, (3, 1, 3)),
                                       torch.ones(3, k + 1, dtype=torch.long), torch.randn(3, k, 8))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


class FloatMask(torch.nn.Module):
    """A decoder given its attention mask as floats, padded when shorter than the prompt (as transformers' mask
    helpers do)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)

    def forward(self, ids, mask):
        if (pad := ids.shape[1] - mask.shape[-1]) > 0:
            mask = F.pad(mask, (0, pad))
        return self.emb(ids) * mask[..., None]


def test_a_float_mask_as_long_as_the_prompt_keeps_the_prompt_length_dynamic(record_export, served_on_openvino):
    """The rank rule left a float [batch, n] tensor's n static; the mask's padding check then fixed the prompt
    length at the recorded one."""
    torch.manual_seed(0)
    h, _, result = record_export(lambda h: h.m(torch.randint(0, 16, (2, 7)), torch.ones(2, 7)), m=FloatMask())
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result)
    assert entry.input("mask").shape == entry.input("ids").shape == ("batch", "sequence") and not entry.specialized
    got, want = served_on_openvino(h, result.out_dir, torch.randint(0, 16, (3, 11)), torch.rand(3, 11))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class MergesIfPlaceholders(torch.nn.Module):
    """A multimodal merge guarded by the prompt's values: features are added only when a placeholder is present."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)

    def forward(self, ids, features):
        x = self.emb(ids)
        if features is not None and (ids == 7).any():
            x = x + (ids == 7)[..., None] * features.mean(1, keepdim=True)
        return x


def test_a_branch_on_the_prompts_values_is_exported_as_recorded_with_its_dims_dynamic(
        record_export, served_on_openvino):
    """torch.export cannot decide ``(ids == 7).any()``: the test is answered as the eager run answered it at that
    line (``tools.branches_as_recorded``), so the graph stays dynamic instead of a static trace."""
    torch.manual_seed(0)
    ids = torch.tensor([[1, 7, 7, 3, 4], [2, 7, 7, 5, 6]])
    h, _, result = record_export(lambda h: h.m(ids, torch.randn(2, 3, 8)), m=MergesIfPlaceholders())
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result)
    assert [b["answer"] for b in entry.tools["branches_as_recorded"]] == [True]
    assert entry.tools["branches_as_recorded"][0]["line"].startswith(__file__)
    assert "torch_export_error" not in entry.tools and entry.input("ids").shape == ("batch", "sequence")
    longer = torch.tensor([[1, 7, 7, 3, 4, 9, 9, 2]] * 3)
    got, want = served_on_openvino(h, result.out_dir, longer, torch.randn(3, 3, 8))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class ChecksItsFeatures(torch.nn.Module):
    """A multimodal merge that first checks, as transformers' ``torch_compilable_check`` does with a tensor
    condition, that the prompt holds as many placeholders as there are features."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x, ids, features):
        mask = ids == 3
        torch._check_tensor_all(mask.sum() * x.shape[-1] == features.numel(), lambda: "placeholders != features")
        return x.masked_scatter(mask[..., None], self.proj(features))


def test_a_tensor_check_before_a_masked_merge_exports_to_onnx_with_the_dynamo_exporter(record_export):
    """The dynamo exporter failed on such a program twice (a size bound by the mask lost while decomposing,
    ``PendingUnbackedSymbolNotFound``; no ONNX function for ``_is_all_true``) and the graph fell back to the
    TorchScript exporter; now it converts, and the file matches PyTorch."""
    torch.manual_seed(0)
    ids = torch.tensor([[3, 1, 3, 2, 2], [1, 3, 2, 2, 2]])
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 5, 4), ids, torch.randn(3, 4)), m=ChecksItsFeatures())
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result)
    assert entry.tools["onnx_exporter"] == "torch.onnx.export(dynamo=True)", entry.tools.get("onnx_dynamo_error")
