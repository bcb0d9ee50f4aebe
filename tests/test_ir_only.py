"""``formats=("openvino",)`` passes wherever the default formats pass (issue #23, the IR-only part).

With the IR alone there is no ONNX file to convert from, and the IR-from-torch path had no second source: a graph
OpenVINO's PyTorch frontend converts wrongly failed verify where the default's IR, read from the ONNX file, passed.
The IR-only path now degrades as the default does: another source first (the ONNX file, written in a temporary
folder, converted and dropped), then static; the manifest says which source gave the IR and what was given up, and
no ONNX file is left in the folder or named in the manifest."""

import warnings

import numpy as np
import pytest
import torch

import shapetrace
from shapetrace._export import writers

transformers = pytest.importorskip("transformers")

from _generation_models import SEQ2SEQ, _Holder, _gpt2, _llama, _sliding, _tokenizer  # noqa: E402

IR_ONLY = {"formats": ("openvino",)}


def _no_onnx_anywhere(result):
    """Nothing ONNX in the folder (no file, no leftover intermediate folder) or named by the manifest."""
    assert not [p for p in result.out_dir.rglob("*") if ".onnx" in p.name], list(result.out_dir.rglob("*"))
    assert not [p for p in result.out_dir.iterdir() if p.name.startswith(".")]
    assert all(g.file("onnx") is None and g.file("onnx_data") is None for g in result.manifest.graphs)


def _wrong_when(monkeypatch, wrong):
    """``writers.write_openvino`` whose IR answers twice the right output when ``wrong(tools)`` says so (an IR
    OpenVINO's CPU plugin runs wrongly, made deterministic here)."""
    import openvino as ov
    from openvino import opset13 as ops

    real = writers.write_openvino

    def doubled(onnx_path, plan, xml, compress, source="auto", *a, **k):
        tools = real(onnx_path, plan, xml, compress, source, *a, **k)
        if source == "auto":  # its loop converts through this function once more, from the source it tries
            return tools
        model = ov.Core().read_model(xml)
        if wrong(tools, model):
            result = model.get_results()[0]
            twice = ops.multiply(result.input_value(0), ops.constant(np.float32(2.0)))
            result.input(0).replace_source_output(twice.output(0))
            ov.save_model(model, xml.with_name("doubled.xml"))
            del result, twice
            for suffix in (".xml", ".bin"):
                xml.with_name("doubled" + suffix).replace(xml.with_suffix(suffix))
        del model
        return tools

    monkeypatch.setattr(writers, "write_openvino", doubled)


def test_an_ir_only_graph_the_torch_path_gets_wrong_gets_its_ir_from_an_onnx_file_not_kept(record_export,
                                                                                          monkeypatch):
    _wrong_when(monkeypatch, lambda tools, model: tools["openvino_from"] == "torch")
    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 3, 4)), m=torch.nn.Linear(4, 4), export_kwargs=IR_ONLY)
    assert result.ok and result.parity, str(result.parity)
    entry = result.manifest.graph("m")
    note = entry.tools["openvino_source_fallback"]
    assert (note["from"], note["to"]) == ("torch", "onnx") and "openvino" in note["because"]
    assert entry.tools["openvino_from"] == "onnx" and entry.tools["openvino_via_onnx"]["kept"] is False
    assert entry.tools["openvino_via_onnx"]["onnx_exporter"].startswith("torch.onnx.export")
    assert entry.input("input").shape[:2] == ("batch", "sequence") and "static_fallback" not in entry.tools
    _no_onnx_anywhere(result)


def test_an_ir_only_graph_no_dynamic_ir_serves_is_exported_static_without_onnx(record_export, monkeypatch):
    _wrong_when(monkeypatch, lambda tools, model: model.inputs[0].get_partial_shape().is_dynamic)
    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 3, 4)), m=torch.nn.Linear(4, 4), export_kwargs=IR_ONLY)
    assert result.ok and result.parity, str(result.parity)
    entry = result.manifest.graph("m")
    assert entry.tools["static_fallback"]["given_up"] == ["batch", "sequence"] and not entry.dims
    assert entry.input("input").shape == (2, 3, 4)
    _no_onnx_anywhere(result)


def test_an_ir_only_conversion_tries_the_onnx_file_after_every_other_source(record_export, monkeypatch):
    """Every other source failing (here: made to, with the error #23 met), the IR comes from the ONNX file, written
    for it and dropped, tried last (a second export); each source's error is noted."""
    real = writers.write_openvino

    def no_torch(onnx_path, plan, xml, compress, source="auto", *a, **k):
        if source in ("torch", "program", "torch-patched"):
            raise RuntimeError("OpConversionFailure: aten::cat: Axis -2 out of the tensor rank range")
        return real(onnx_path, plan, xml, compress, source, *a, **k)

    monkeypatch.setattr(writers, "write_openvino", no_torch)
    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 3, 4)), m=torch.nn.Linear(4, 4), export_kwargs=IR_ONLY)
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result.parity)
    assert entry.tools["openvino_from"] == "onnx" and "Axis -2" in entry.tools["openvino_from_torch_error"]
    assert {k for k in entry.tools if k.startswith("openvino_from_")} == \
        {"openvino_from_torch_error", "openvino_from_program_error", "openvino_from_torch_patched_error"}
    assert "openvino_source_fallback" not in entry.tools
    _no_onnx_anywhere(result)


# ============================================================================ the generation tests' models, IR only


def _left_padded(vocab, batch, length, pad):
    ids = torch.randint(5, vocab, (batch, length))
    mask = torch.ones_like(ids)
    mask[-1, :pad] = 0
    return ids, mask


DECODERS = {"gpt2": _gpt2, "llama": _llama, "sliding-window": _sliding}


@pytest.fixture(scope="module", params=["gpt2", pytest.param("llama", marks=pytest.mark.slow),
                                        pytest.param("sliding-window", marks=pytest.mark.slow)])
def decoder_ir_only(request, tmp_path_factory):
    """A decoder held by a plain object, ``generate`` with a left-padded attention mask (the bench's GPT-2 form,
    tiny), exported IR only; GPT-2 stateful too, as the bench exports it. The stateful form is made from the torch
    module whatever the formats: for Llama's masked step OpenVINO's fused attention refuses the mask's shape, and
    the sliding-window decoder's cache-reorder fusion fails (from the ONNX-derived IR too) -- not IR-only gaps."""
    torch.manual_seed(0)
    h = _Holder()
    h.model = DECODERS[request.param](_tokenizer())
    ids, mask = _left_padded(h.model.config.vocab_size, 2, 7, 2)
    out = tmp_path_factory.mktemp(request.param) / "export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(h):
            h.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        result = shapetrace.export_all(h, out, progress=False, stateful=request.param == "gpt2", **IR_ONLY)
    return request.param, h, result


def test_an_ir_only_decoder_with_a_padded_prompt_verifies_with_its_sources_named(decoder_ir_only):
    name, h, result = decoder_ir_only
    assert result.ok and result.parity, str(result.parity)
    assert [g.name for g in result.manifest.graphs] == ["model", "model@2"]
    _no_onnx_anywhere(result)
    for g in result.manifest.graphs:
        assert g.tools["openvino_from"] in ("torch", "onnx", "program", "torch-patched")
        if g.tools["openvino_from"] == "onnx":  # converted from an ONNX file written for it and dropped
            assert g.tools["openvino_via_onnx"]["kept"] is False
    if name == "gpt2":
        # OpenVINO's attention op, as its PyTorch frontend writes it, answers NaN for the padded prompt rows (the
        # mask hides their every key; torch answers 0): verify caught it, the IR came from the ONNX file instead
        prefill = result.manifest.graph("model")
        note = prefill.tools["openvino_source_fallback"]
        assert (note["from"], note["to"]) == ("torch", "onnx") and "NaN" in note["because"]
        assert prefill.tools["openvino_from"] == "onnx" and prefill.dims
        step = result.manifest.graph("model@2")
        assert step.file("openvino_stateful") and step.tools["stateful_states"] == 4
        assert all(c for c in result.parity.checks if c.backend == "openvino-stateful")


def test_an_ir_only_decoder_generates_the_same_greedy_tokens(decoder_ir_only):
    name, h, result = decoder_ir_only
    torch.manual_seed(1)
    ids, mask = _left_padded(h.model.config.vocab_size, 2, 11, 3)  # longer prompts, more padding, more tokens
    want = h.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(h, result.out_dir, backend="openvino") as rt:
            got = h.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
            ran = {s.graph: (s.calls, s.ran_on) for s in rt.stats()}
    assert torch.equal(got, want), (got, want)
    assert ran["model"][0] == 1 and ran["model@2"][0] == 7, ran  # the prompt, then one step per new token
    assert all(on.startswith("openvino") for _, on in ran.values()), ran
    if name == "gpt2":  # stateful: the step holds its new tokens static at 1, so the prompt starts on "model"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with shapetrace.load(h, result.out_dir, backend="openvino", stateful=True) as rt:
                got = h.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
                ran = {s.graph: s.calls for s in rt.stats()}
        assert torch.equal(got, want), (got, want)
        assert ran == {"model": 1, "model@2 (stateful)": 7}, ran


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_an_ir_only_encoder_decoder_verifies_and_generates_the_same(name, tmp_path):
    build, run, again, new_input, graphs = SEQ2SEQ[name]
    torch.manual_seed(0)
    h = _Holder()
    h.model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(h):
            run(h.model)
        result = shapetrace.export_all(h, tmp_path / "o", progress=False, stateful=True, **IR_ONLY)
        assert result.ok and result.parity, str(result.parity)
        assert [g.name for g in result.manifest.graphs] == graphs
        _no_onnx_anywhere(result)
        torch.manual_seed(1)
        x = new_input()
        want = again(h.model, x)
        with shapetrace.load(h, tmp_path / "o", backend="openvino"):
            got = again(h.model, x)
    assert torch.equal(got, want), (got, want)


# ============================================================================ the ControlNet pipeline, IR only
@pytest.mark.slow  # every graph already converted from torch before the IR-only chain: a regression guard
def test_the_controlnet_pipeline_exports_ir_only_and_verifies(exports):
    """Every graph's IR converts from the torch module (the fast source, first): no ONNX file is written for any
    of them, not even as an intermediate, and verify passes on OpenVINO."""
    _, _, out, result = exports.get("controlnet", verify=True, **IR_ONLY)
    assert result.ok and result.parity, str(result.parity)
    assert [g.name for g in result.manifest.graphs] == ["text_encoder", "controlnet", "unet", "vae.decode"]
    _no_onnx_anywhere(result)
    for g in result.manifest.graphs:
        assert g.tools["openvino_from"] == "torch" and "openvino_via_onnx" not in g.tools, (g.name, dict(g.tools))
        assert g.dims and "static_fallback" not in g.tools  # nothing given up
    assert {c.backend for c in result.parity.checks} == {"torch", "openvino"}
    assert all(c for c in result.parity.checks if c.backend == "openvino")
    assert {c.input_set for c in result.parity.checks if c.backend == "openvino"} >= {"example", "resized"}
