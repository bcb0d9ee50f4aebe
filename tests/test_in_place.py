"""State carried from one call to the next. A call that fills its arguments' lists in place (a causal video VAE's
conv cache, ``feat_cache[i] = x``): those tensors are recorded as ``updated.*`` outputs, exported, and put back into
the caller's list by ``load``. A pipeline's own cache class (plain objects holding tensors): flattened by its
attributes, rebuilt without ``__init__``."""

import pytest
import torch
import torch.nn.functional as F

import shapetrace
from shapetrace.manifest import read


class CausalConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 4, 3)

    def forward(self, x, feat_cache=None):  # x [batch, 4, frames]
        if feat_cache is None:
            return self.conv(F.pad(x, (2, 0)))
        past = feat_cache[0] if feat_cache[0] is not None else torch.zeros_like(x[:, :, :1]).expand(-1, -1, 2)
        feat_cache[0] = torch.cat([past, x], dim=2)[:, :, -2:]  # the last two frames, for the next chunk
        if feat_cache[1] is None:  # a marker for the next chunk (Wan's "Rep"), which replaces it with a tensor
            feat_cache[1] = "Rep"
        else:
            feat_cache[1] = x[:, :, -1:] * 2
        return self.conv(torch.cat([past, x], dim=2))


class Video:
    """Encodes a video in chunks (1 frame, then 4 at a time), carrying the conv cache from chunk to chunk."""

    def __init__(self):
        self.enc = CausalConv()

    def encode(self, video):
        cache = [None, None]
        outs = [self.enc(video[:, :, :1], feat_cache=cache)]
        for i in range(1, video.shape[2], 4):
            outs.append(self.enc(video[:, :, i:i + 4], feat_cache=cache))
        return torch.cat(outs, dim=2)


class VideoVAE(torch.nn.Module):
    """The same chunk loop as a module's own method: ``encode`` loops over ``enc``, so its calls are the graphs
    (recorded by hooks, the first ones only when the loop shows itself)."""

    def __init__(self):
        super().__init__()
        self.enc = CausalConv()

    def encode(self, video):
        return Video.encode(self, video)


class VideoApp:
    def __init__(self):
        self.vae = VideoVAE()

    def encode(self, video):
        return self.vae.encode(video)


@pytest.mark.parametrize("holder, graph", [(Video, "enc"), (VideoApp, "vae.enc")])
def test_a_list_filled_in_place_is_exported_and_filled_again_by_load(tmp_path, holder, graph):
    torch.manual_seed(0)
    v = holder()
    with shapetrace.record(v) as rec:
        v.encode(torch.randn(1, 4, 9))
    # the empty cache, the cache with the marker, the cache with a tensor where the marker was
    assert list(rec.graphs) == [graph, f"{graph}@2", f"{graph}@3"]
    assert all("updated.feat_cache.0" in rec[g].outputs for g in rec.graphs)
    assert rec[graph].output_tree["updated"] == {"feat_cache.1": "Rep"}  # the marker, put back by load too
    assert "updated.feat_cache.1" not in rec[graph].outputs  # read when the call returned, not after the next one
    result = shapetrace.export_all(v, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    assert [o.key for o in read(tmp_path / "o").graph(f"{graph}@2").outputs] == [
        "output", "updated.feat_cache.0", "updated.feat_cache.1"]
    for frames in (9, 13):
        video = torch.randn(1, 4, frames)
        want = v.encode(video)
        with shapetrace.load(v, tmp_path / "o", backend="openvino") as rt:
            got = v.encode(video)
            calls = {s.graph: s.calls for s in rt.stats() if s.graph in rec.graphs}
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # the cache came back each time: chunk 2 sees the marker, every later chunk a tensor
        assert calls == {graph: 1, f"{graph}@2": 1, f"{graph}@3": (frames - 1) // 4 - 1}


class LayerCache:  # a pipeline's own cache classes: plain Python objects holding tensors
    def __init__(self):
        self.k = None


class RefCache:
    def __init__(self, layers):
        self.layers = [LayerCache() for _ in range(layers)]
        self.tokens = 0


class RefNet(torch.nn.Module):
    """The first call extracts reference K per layer into a new cache it returns; later calls reuse it."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))

    def forward(self, x, ref=None, cache=None):
        if cache is None:
            cache = RefCache(len(self.proj))
            for layer, p in zip(cache.layers, self.proj):
                layer.k = p(ref)
            cache.tokens = ref.shape[1]
        for layer, p in zip(cache.layers, self.proj):
            x = p(x) + layer.k.mean(dim=1, keepdim=True)
        return x, cache


class RefPipeline:
    def __init__(self):
        self.net = RefNet()

    def __call__(self, x, ref, steps=3):
        x, cache = self.net(x, ref=ref)
        for _ in range(steps - 1):
            x, cache = self.net(x, cache=cache)
        return x


def test_a_plain_object_holding_tensors_is_flattened_by_its_attributes_and_rebuilt(tmp_path):
    torch.manual_seed(0)
    pipe = RefPipeline()
    with shapetrace.record(pipe) as rec:
        pipe(torch.randn(1, 5, 4), torch.randn(1, 3, 4))
    assert list(rec.graphs) == ["net", "net@2"]
    assert {"cache.layers.0.k", "cache.layers.1.k"} <= set(rec["net@2"].inputs)  # no opaque object
    assert list(rec["net"].outputs) == ["0", "1.layers.0.k", "1.layers.1.k"]  # the cache it returns, by attribute
    result = shapetrace.export_all(pipe, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    x, ref = torch.randn(1, 7, 4), torch.randn(1, 6, 4)  # other lengths
    want = pipe(x, ref, steps=4)
    with shapetrace.load(pipe, tmp_path / "o", backend="onnxruntime") as rt:
        got = pipe(x, ref, steps=4)
        calls = {s.graph: s.calls for s in rt.stats()}
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert calls == {"net": 1, "net@2": 3}


class Doubling:  # an attention-processor-like object, swapped in for one call
    def __call__(self, x):
        return x * 2


class Plain:
    def __call__(self, x):
        return x


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.processor = Plain()

    def forward(self, x):
        return self.processor(self.lin(x))


class SwappingPipeline:
    """Like a PAG pipeline: swaps the block's processor for the length of its call, then puts the original back."""

    def __init__(self):
        self.block = Block()

    def __call__(self, x):
        original = self.block.processor
        self.block.processor = Doubling()
        try:
            return self.block(x)
        finally:
            self.block.processor = original


def test_the_export_is_of_the_module_as_the_recorded_call_saw_it(tmp_path):
    torch.manual_seed(0)
    pipe = SwappingPipeline()
    with shapetrace.record(pipe):
        pipe(torch.randn(2, 4))
    assert type(pipe.block.processor) is Plain  # the pipeline put its processor back
    result = shapetrace.export_all(pipe, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    assert result.manifest.graph("block").tools["recorded_state"] == {"restored": 1, "first": ["processor"]}
    assert type(pipe.block.processor) is Plain  # and export put it back too
    x = torch.randn(3, 4)
    want = pipe(x)
    with shapetrace.load(pipe, tmp_path / "o", backend="onnxruntime"):
        torch.testing.assert_close(pipe(x), want, atol=1e-5, rtol=1e-5)  # doubled, as in the pipeline's call
