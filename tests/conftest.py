import dataclasses
import json
import os
import shutil
import warnings
from types import MappingProxyType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny export folder (``_tiny.make_tiny_export``), built once per session: copy it before changing it."""
    from _tiny import make_tiny_export

    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture
def tiny(tiny_dir, tmp_path):
    """A private copy of the tiny export folder (tests may break it)."""
    out = tmp_path / "export"
    shutil.copytree(tiny_dir, out)
    return out


@pytest.fixture
def record_export(tmp_path):
    """``record_export(call, export_kwargs=None, **modules)``: a plain holder with ``modules`` as its attributes,
    recorded (no grad) while ``call(holder)`` runs, then exported to ``tmp_path / "o"`` by
    ``export_all(progress=False, **export_kwargs)`` (verify on unless they say otherwise); returns (holder, call's
    output, result)."""
    import shapetrace
    import torch

    def run(call, *, export_kwargs=None, **modules):
        holder = type("Holder", (), {})()
        for name, module in modules.items():
            setattr(holder, name, module)
        with torch.no_grad(), shapetrace.record(holder):
            out = call(holder)
        return holder, out, shapetrace.export_all(holder, tmp_path / "o", progress=False, **(export_kwargs or {}))

    return run


@pytest.fixture
def served_on_openvino():
    """``served_on_openvino(holder, out_dir, *args) -> (got, want)``: ``holder.m(*args)`` in PyTorch, then under
    ``load(holder, out_dir, backend="openvino")``, where graph ``m`` must answer the one call on OpenVINO."""
    import shapetrace
    import torch

    def run(holder, out, *args):
        with torch.no_grad():
            want = holder.m(*args)
            with shapetrace.load(holder, out, backend="openvino") as rt:
                got = holder.m(*args)
            assert [(s.graph, s.ran_on, s.calls) for s in rt.stats()] == [("m", "openvino:CPU", 1)]
        return got, want

    return run


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _ExportCache:
    """Record + export each offline example once per test session (exports are the slow part).

    ``get(name, **export_kwargs)`` records one default run of ``EXAMPLES[name]`` and exports it with
    ``export_all(verify=False, **export_kwargs)``, once per distinct keyword set. ``get(name, graphs=[...])`` does
    not export again: ``export_all`` exports each graph on its own and lists one entry per graph in the manifest,
    so an export of some graphs is the full export's files of those graphs under a manifest that lists only them,
    in the order asked, with no parity -- which is what the cache makes, in a folder of its own (copies; compared
    with a real ``graphs=`` export: the same files and manifest but for timings and OpenVINO's node names). The
    object is shared by every test that asks for the same example: leave it as you found it (``load`` and
    ``record`` blocks restore it).
    """

    def __init__(self, root):
        self.root = root
        self.done = {}

    def get(self, name, *, graphs=None, **export_kwargs):
        import shapetrace
        from shapetrace.testing import EXAMPLES

        key = (name, tuple(sorted(export_kwargs.items())))
        if key not in self.done:
            ex = EXAMPLES[name]
            obj = ex.build()
            with shapetrace.record(obj) as rec:
                ex.run(obj)
            out = self.root / f"{name}-{len(self.done)}"
            result = shapetrace.export_all(obj, out, progress=False, **{"verify": False, **export_kwargs})
            self.done[key] = (obj, rec, out, result)
        if graphs is None:
            return self.done[key]
        graphs = [graphs] if isinstance(graphs, str) else list(graphs)
        sub_key = (*key, tuple(graphs))
        if sub_key not in self.done:
            self.done[sub_key] = self._narrowed(self.done[key], graphs, self.root / f"{name}-{len(self.done)}")
        return self.done[sub_key]

    @staticmethod
    def _narrowed(full, graphs, out):
        """The export of ``full`` narrowed to ``graphs`` in ``out``: their files, a manifest listing only them."""
        obj, rec, full_out, result = full
        manifest = json.loads((full_out / "manifest.json").read_text())
        entries = {e["name"]: e for e in manifest["graphs"]}
        missing = [g for g in graphs if g not in entries]
        if missing:
            raise KeyError(f"graphs={missing!r} are not in the export of {full_out.name}; it holds {list(entries)}")
        out.mkdir()
        for e in (entries[g] for g in graphs):
            for value in (e.get("files") or {}).values():
                for f in value if isinstance(value, list) else [value]:
                    if f:
                        shutil.copy2(full_out / f, out / f)
                        if f.endswith(".xml"):
                            shutil.copy2(full_out / (f[:-4] + ".bin"), out / (f[:-4] + ".bin"))
        manifest["graphs"] = [entries[g] for g in graphs]
        manifest["parity"] = None
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        narrowed = dataclasses.replace(result, out_dir=out, manifest=manifest, parity=None,
                                       graphs=MappingProxyType({g: result.graphs[g] for g in graphs}))
        return obj, rec, out, narrowed


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """``exports.get("controlnet") -> (obj, recording, out_dir, ExportResult)``; do not modify out_dir in place.

    ``exports.get("controlnet", graphs=["controlnet", "text_encoder"])``: the same export narrowed to those graphs
    (see :class:`_ExportCache`).
    """
    return _ExportCache(tmp_path_factory.mktemp("exports"))
