"""Generation: ``generate()`` loops with a KV cache, recorded, exported and served token for token.

A decoder is called first without a cache (an empty ``DynamicCache``: the prompt) and then with one (one token at
a time): two call structures of one method, exported as two graph variants (``model`` and ``model@2``) that
``load`` picks per call. The cache's tensors are named inputs and outputs (``cache.layers.0.keys``), their length
is the dynamic ``past_sequence``; the real cache class is rebuilt around the runtime's outputs, so ``generate``
runs unchanged.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import shapetrace
from shapetrace.manifest import read

transformers = pytest.importorskip("transformers")

from _generation_models import SEQ2SEQ, _Holder, _gpt2, _llama, _sliding, _tokenizer  # noqa: E402


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def generation(request, tmp_path_factory):
    torch.manual_seed(0)
    tok = _tokenizer()
    model = {"gpt2": _gpt2, "llama": _llama}[request.param](tok)
    gen = transformers.pipeline("text-generation", model=model, tokenizer=tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(gen) as rec:
            gen("a b c", max_new_tokens=6, do_sample=False)
        out = tmp_path_factory.mktemp(request.param) / "export"
        result = shapetrace.export_all(gen, out, progress=False, stateful=True)
    return gen, rec, out, result


def test_the_decoder_step_is_recorded_as_two_variants_with_a_named_cache(generation):
    gen, rec, out, result = generation
    assert result.ok and result.parity, str(result)
    assert list(rec.graphs) == ["model", "model@2"]
    assert rec["model"].num_calls == 1 and rec["model@2"].num_calls == 5  # the prompt, then one step per token
    first, step = read(out).graph("model"), read(out).graph("model@2")
    assert first.variant_of == step.variant_of == "model"
    assert not any(n.startswith("cache.") for n in first.input_names)  # the first call's cache is empty
    keys = [n for n in step.input_names if n.startswith("cache.")]
    assert keys == ["cache.layers.0.keys", "cache.layers.0.values", "cache.layers.1.keys", "cache.layers.1.values"]
    assert step.input("cache.layers.0.keys").shape[:1] == ("batch",) and "past_sequence" in step.dims
    assert step.input("cache.layers.0.keys").shape[2] == "past_sequence"
    assert "output.cache.layers.0.keys" in step.output_names
    # generate() calls the model itself, past the proxy: load serves the module's own forward for these graphs
    assert first.calls_without_proxy == 1 and step.calls_without_proxy == 5


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_greedy_generation_is_token_identical_at_another_prompt_and_length(generation, backend):
    gen, rec, out, _ = generation
    prompt = "chef in the kitchen with a knife and a cat"  # longer than the recorded "a b c"
    want = gen(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert len(set(want[len(prompt):].split())) > 2  # real text, not one repeated token
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(gen, out, backend=backend) as rt:
            got = gen(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
            calls = {s.graph: s.calls for s in rt.stats()}
    assert got == want
    assert calls == {"model": 1, "model@2": 11}


@pytest.mark.parametrize("make", [_gpt2, pytest.param(_llama, marks=pytest.mark.slow)], ids=["gpt2", "llama"])
def test_an_ir_only_stateful_export_takes_the_prefill_onto_the_empty_cache_and_generates_the_same(make, tmp_path):
    # formats=("openvino",): the IR comes from the torch module through OpenVINO's frontend, which converts neither
    # the empty cache layer (torch.tensor([])) nor its concatenation on axis -2 -- the trace drops that operand
    torch.manual_seed(0)
    tok = _tokenizer()
    gen = transformers.pipeline("text-generation", model=make(tok), tokenizer=tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(gen):
            gen("a b c", max_new_tokens=4, do_sample=False)
        result = shapetrace.export_all(gen, tmp_path, progress=False, stateful=True, formats=("openvino",))
    assert result.ok and result.parity, str(result)
    assert [g.tools["openvino_from"] for g in result.manifest.graphs] == ["torch", "torch"]
    assert not any(g.file("onnx") for g in result.manifest.graphs)
    prompt = "chef in the kitchen with a knife"
    want = gen(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(gen, tmp_path, backend="openvino", stateful=True):
            got = gen(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert got == want




@pytest.fixture(scope="module", params=sorted(SEQ2SEQ))
def seq2seq(request, tmp_path_factory):
    build, run, _, _, graphs = SEQ2SEQ[request.param]
    torch.manual_seed(0)
    h = _Holder()
    h.model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(h) as rec:
            run(h.model)
        out = tmp_path_factory.mktemp(request.param) / "export"
        result = shapetrace.export_all(h, out, progress=False)
    return request.param, h, rec, out, result


def test_encoder_decoder_graphs_are_the_module_calls_inside_generate(seq2seq):
    name, h, rec, out, result = seq2seq
    assert result.ok and result.parity, str(result)
    assert list(rec.graphs) == SEQ2SEQ[name][4]
    assert rec[SEQ2SEQ[name][4][0]].num_calls == 1  # the encoder / vision model: once per generate
    step = read(out).graph(SEQ2SEQ[name][4][2])
    assert any(n.startswith("cache.self_attention_cache.layers.0.") for n in step.input_names)
    assert any(n.startswith("cache.cross_attention_cache.layers.0.") for n in step.input_names)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_encoder_decoder_generation_is_token_identical(seq2seq, backend):
    name, h, rec, out, _ = seq2seq
    _, _, again, new_input, graphs = SEQ2SEQ[name]
    torch.manual_seed(1)
    x = new_input()  # another input length (BART) / batch (BLIP) than recorded, more new tokens
    want = again(h.model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(h, out, backend=backend) as rt:
            got = again(h.model, x)
            calls = {s.graph: s.calls for s in rt.stats()}
    assert torch.equal(got, want), (got, want)
    assert calls[graphs[0]] == 1 and calls[graphs[1]] == 1 and calls[graphs[2]] == 7


def test_a_call_structure_that_was_not_recorded_is_refused(generation):
    gen, rec, out, _ = generation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(gen, out, backend="onnxruntime"):
            with pytest.raises(shapetrace.RuntimeMismatchError, match=r"matches none of the recorded variants "
                                                                      r"\(model, model@2\); record a run"):
                gen("a b c d", max_new_tokens=3, do_sample=False, use_cache=False)  # no cache: never recorded
            ok = gen("a b c d", max_new_tokens=3, do_sample=False)  # the runtime still answers recorded forms
    assert ok == gen("a b c d", max_new_tokens=3, do_sample=False)


def test_speech_recognition_pipeline_is_text_identical(tmp_path):
    np = pytest.importorskip("numpy")
    from shapetrace.testing import speech_recognition_pipeline

    asr = speech_recognition_pipeline()
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(asr) as rec:
            asr(audio, generate_kwargs=dict(max_new_tokens=5))
        assert list(rec.graphs) == ["model.model.encoder", "model", "model@2"]  # Whisper's own generate loops
        assert shapetrace.export_all(asr, tmp_path / "o", progress=False, stateful=True).parity
        other = np.random.default_rng(1).standard_normal(12000).astype(np.float32) * 0.1  # other audio, more tokens
        want = asr(other, generate_kwargs=dict(max_new_tokens=9))
        for backend in ("openvino", "onnxruntime"):
            with shapetrace.load(asr, tmp_path / "o", backend=backend) as rt:
                got = asr(other, generate_kwargs=dict(max_new_tokens=9))
                calls = {s.graph: s.calls for s in rt.stats()}
            assert got == want and len(want["text"]) > 3, (backend, got, want)
            assert calls["model.model.encoder"] == 1 and calls["model"] == 1 and calls["model@2"] == 8
        # stateful: the cross-attention cache the steps only read is filled by the first step, run explicitly
        with shapetrace.load(asr, tmp_path / "o", stateful=True) as rt:
            got = asr(other, generate_kwargs=dict(max_new_tokens=9))
            calls = {s.graph: s.calls for s in rt.stats()}
        assert got == want, (got, want)
        assert calls["model"] == 1 and calls["model@2 (stateful)"] == 8, calls


def test_beam_search_matches_and_a_module_cast_after_export_is_refused(generation):
    gen, rec, out, _ = generation
    prompt = "chef in the kitchen"
    want = gen(prompt, max_new_tokens=8, do_sample=False, num_beams=3)  # greedy was recorded: batch 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(gen, out, backend="onnxruntime"):
            got = gen(prompt, max_new_tokens=8, do_sample=False, num_beams=3)  # 3 beams: batch 3, cache reordered
        assert got == want
        gen.model.to(torch.float64)
        try:
            with pytest.raises(shapetrace.RuntimeMismatchError, match=r"the module at 'model' is float64 now, the "
                                                                      r"graph was exported from it in float32"):
                shapetrace.load(gen, out, backend="onnxruntime")
        finally:
            gen.model.to(torch.float32)


@pytest.mark.parametrize("beams", [1, 3])
def test_openvino_stateful_form_is_token_identical(generation, beams):
    gen, rec, out, result = generation
    step = read(out).graph("model@2")
    assert step.file("openvino_stateful") == "model_2.stateful.xml" and step.tools["stateful_states"] == 4
    # verify held the stateful file to the recorded step: the cache written into its variables, read back after
    stateful = [c for c in result.parity.checks if c.backend == "openvino-stateful"]
    assert {c.output for c in stateful} == {o.name for o in step.outputs} and all(stateful)
    # made from the torch module: attention stays one op, which OpenVINO fuses with the cache variables (the speed)
    assert step.tools["stateful_openvino_from"] == "torch" and "stateful_torch_error" not in step.tools
    if beams == 1:
        import openvino as ov

        compiled = ov.Core().compile_model(str(out / step.file("openvino_stateful")), "CPU")
        kinds = {op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()}
        assert "ScaledDotProductAttention" in kinds, " ".join(sorted(kinds))
    want = [gen(p, max_new_tokens=10, do_sample=False, num_beams=beams) for p in ("chef in the kitchen", "a b")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(gen, out, backend="openvino", stateful=True) as rt:
            got = [gen(p, max_new_tokens=10, do_sample=False, num_beams=beams) for p in ("chef in the kitchen", "a b")]
            calls = {s.graph: s.calls for s in rt.stats()}
    assert got == want  # two generations in a row: the state is reset by the second one's empty cache
    assert calls == {"model@2 (stateful)": 20}  # prompt and steps on one model; the others are not even compiled
    with pytest.raises(ValueError, match="stateful=True is OpenVINO's form"):
        shapetrace.load(gen, out, backend="onnxruntime", stateful=True)


def test_a_position_past_the_models_table_is_refused_not_answered(generation):
    gen, rec, out, _ = generation
    step = read(out).graph("model@2")
    bounds = dict(step.index_bounds)
    assert bounds.pop("input_ids") == len(gen.tokenizer) - 1  # the token embedding's rows
    if gen.model.config.model_type == "gpt2":  # a learned position table of 128 rows; Llama's RoPE has none
        assert bounds == {"position_ids": 127}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(IndexError):
                gen("a b", max_new_tokens=130, do_sample=False)  # PyTorch itself
            for stateful in (False, True):
                with shapetrace.load(gen, out, backend="openvino", stateful=stateful):
                    with pytest.raises(shapetrace.RuntimeMismatchError, match=r"input 'position_ids' holds 128, "
                                                                              r"but the graph looks it up in a "
                                                                              r"table of 128 rows"):
                        gen("a b", max_new_tokens=130, do_sample=False)
    else:
        assert bounds == {}




@pytest.mark.parametrize("build", [_llama, _sliding], ids=["full-attention", "sliding-window"])
def test_a_decoder_step_with_an_attention_mask_serves_every_later_step(tmp_path, build):
    """``generate(input_ids, attention_mask=...)`` held by a plain object: the decoder step's mask is one longer
    than its cache. Traced with its one token doubled (against torch.export's 0/1 specialisation) but the mask
    left as recorded, the step drew a guard (``sequence + past_sequence - attention_mask_sequence > 0``) that its
    own recorded call breaks, and load refused every step: the token dim stays at 1 there instead. A sliding-window
    cache layer keeps a Python token counter: traced as is it fixed the cache length (transformers.exporters'
    patches trace it as a plain layer), and PyTorch, fed the cache rebuilt from its recorded context at another
    length, refused verify's resized inputs, which made the step static."""
    torch.manual_seed(0)
    h = _Holder()
    h.model = build(_tokenizer())
    vocab = h.model.config.vocab_size
    ids = torch.randint(5, vocab, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding: the mask is a real input, not dropped as all ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(h):
            h.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        result = shapetrace.export_all(h, tmp_path / "out", progress=False, backends=("openvino",))
    assert result.ok, str(result)
    step = read(tmp_path / "out").graph("model@2")
    assert {"input": "input_ids", "dims": [1]} in step.tools["size1_static_broken_guard"]
    assert step.input("input_ids").shape[1] == 1 and isinstance(step.input("attention_mask").shape[1], str)
    assert "static_fallback" not in step.tools and not step.specialized  # every cache length stays dynamic
    assert all(isinstance(i.shape[2], str) for i in step.inputs if i.name.endswith(("keys", "values")))
    longer = torch.randint(5, vocab, (2, 11))
    longer_mask = torch.ones_like(longer)
    longer_mask[0, :3] = 0
    want = h.model.generate(input_ids=longer, attention_mask=longer_mask, max_new_tokens=8, do_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(h, tmp_path / "out", backend="openvino") as rt:
            got = h.model.generate(input_ids=longer, attention_mask=longer_mask, max_new_tokens=8, do_sample=False)
            calls = {s.graph: (s.calls, s.ran_on) for s in rt.stats()}
    assert torch.equal(got, want)
    assert calls["model@2"][0] == 7 and calls["model@2"][1].startswith("openvino")
