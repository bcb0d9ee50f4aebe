"""A call that fills its arguments' lists in place (a causal video VAE's conv cache, ``feat_cache[i] = x``): those
tensors are recorded as ``updated.*`` outputs, exported, and put back into the caller's list by ``load``."""

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
        return self.conv(torch.cat([past, x], dim=2))


class Video:
    """Encodes a video in chunks (1 frame, then 4 at a time), carrying the conv cache from chunk to chunk."""

    def __init__(self):
        self.enc = CausalConv()

    def encode(self, video):
        cache = [None]
        outs = [self.enc(video[:, :, :1], feat_cache=cache)]
        for i in range(1, video.shape[2], 4):
            outs.append(self.enc(video[:, :, i:i + 4], feat_cache=cache))
        return torch.cat(outs, dim=2)


def test_a_list_filled_in_place_is_exported_and_filled_again_by_load(tmp_path):
    torch.manual_seed(0)
    v = Video()
    with shapetrace.record(v) as rec:
        v.encode(torch.randn(1, 4, 9))
    assert list(rec.graphs) == ["enc", "enc@2"]  # the empty cache, then the filled one
    assert "updated.feat_cache.0" in rec["enc"].outputs and "updated.feat_cache.0" in rec["enc@2"].outputs
    result = shapetrace.export_all(v, tmp_path / "o", progress=False)
    assert result.ok and result.parity, str(result)
    assert [o.key for o in read(tmp_path / "o").graph("enc@2").outputs] == ["output", "updated.feat_cache.0"]
    for frames in (9, 13):
        video = torch.randn(1, 4, frames)
        want = v.encode(video)
        with shapetrace.load(v, tmp_path / "o", backend="openvino") as rt:
            got = v.encode(video)
            calls = {s.graph: s.calls for s in rt.stats()}
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert calls == {"enc": 1, "enc@2": (frames - 1) // 4}  # the cache came back: every later chunk is enc@2
