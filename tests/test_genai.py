"""``export_all(..., genai=True)``: the ``genai/`` folder OpenVINO GenAI opens as it is.

Tiny GPT-2 and Llama-style text-generation pipelines (random weights, offline) are recorded on one prompt and
exported; GenAI's own ``LLMPipeline`` and ``ContinuousBatchingPipeline`` then run the folder, strings in and out
through the converted tokenizer, and give PyTorch's tokens at other prompt lengths. A tiny Whisper
speech-recognition pipeline is recorded on one audio clip; GenAI's ``WhisperPipeline`` transcribes clips of other
lengths, raw audio in and text out, with PyTorch's tokens. An object GenAI has no pipeline for exports everything
else and says why there is no folder.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

import shapetrace
from shapetrace._report.html import render_html
from shapetrace.manifest import read

transformers = pytest.importorskip("transformers")
og = pytest.importorskip("openvino_genai")
ov = pytest.importorskip("openvino")

#: f32 compute and KV cache, as shapetrace's own f32 exports run: the CPU defaults (bf16 where the CPU has it, a u8
#: cache) change tokens on random weights
F32 = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"}
PROMPT = "chef in the kitchen with a knife and a cat"  # longer than the recorded "a b c"
WORDS = "chef in the kitchen with a knife and a cat dog on the street at night".split()


def _tokenizer():
    from shapetrace.testing import tiny_bert_tokenizer

    return tiny_bert_tokenizer()


def _gpt2(tok):
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                     initializer_range=0.5, bos_token_id=tok.cls_token_id, eos_token_id=None,
                                     pad_token_id=tok.pad_token_id)
    return transformers.GPT2LMHeadModel(config).eval()


def _llama(tok):  # rotary positions, grouped-query attention
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      initializer_range=0.5, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                      bos_token_id=tok.cls_token_id, eos_token_id=None)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    tok = _tokenizer()
    gen = transformers.pipeline("text-generation", model={"gpt2": _gpt2, "llama": _llama}[request.param](tok),
                                tokenizer=tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(gen):
            gen("a b c", max_new_tokens=6, do_sample=False)
        out = tmp_path_factory.mktemp(request.param) / "export"
        result = shapetrace.export_all(gen, out, progress=False, verify=False, genai=True)
    return gen, out, result


def _config(pipe, new_tokens, **kw):
    """Greedy, ``new_tokens`` long. The tiny models have no end token, which GenAI's config check refuses (-1):
    give it one and ignore it, as PyTorch runs with none."""
    g = pipe.get_generation_config() if hasattr(pipe, "get_generation_config") else og.GenerationConfig()
    g.max_new_tokens, g.do_sample = new_tokens, False
    g.eos_token_id, g.stop_token_ids, g.ignore_eos = 3, {3}, True
    for k, v in kw.items():
        setattr(g, k, v)
    return g


def _torch_tokens(model, ids, new_tokens, **kw):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=new_tokens, do_sample=False, **kw)
    return out[0, len(ids):].tolist()


def test_the_genai_folder_has_the_layout_llmpipeline_reads(exported):
    gen, out, result = exported
    assert all(result.graphs.values()), str(result)  # the usual graphs exported beside it
    note = result.manifest.genai
    assert note == read(out).genai  # in the manifest on disk
    assert note["pipeline"] == "LLMPipeline" and note["dir"] == "genai" and note["graph"] == "model"
    assert note["converted_with"] == "transformers.exporters.exporter_openvino.OpenVINOExporter"
    folder = out / "genai"
    for f in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
              "config.json", "generation_config.json", "tokenizer_config.json"):
        assert (folder / f).is_file(), f
    model = ov.Core().read_model(str(folder / "openvino_model.xml"))
    assert sorted(n for p in model.inputs for n in p.get_names()) == sorted(
        ["input_ids", "attention_mask", "position_ids", "beam_idx"])
    assert [p.get_any_name() for p in model.outputs] == ["logits"]
    assert model.input("beam_idx").get_element_type() == ov.Type.i32
    assert model.input("attention_mask").get_partial_shape().is_dynamic
    ops = [op.get_type_name() for op in model.get_ops()]
    assert ops.count("ReadValue") == 4 == note["states"]  # 2 layers x keys, values
    assert ops.count("ScaledDotProductAttention") == 2  # one per layer: GenAI's paged-attention rewrite applies
    prompt, step = (out / result.manifest.graph(g).file("openvino") for g in ("model", "model@2"))
    a, b = prompt.with_suffix(".bin"), step.with_suffix(".bin")
    assert os.path.samefile(a, b) or a.read_bytes() != b.read_bytes()  # the same bytes are stored once


def test_llmpipeline_generates_pytorchs_tokens_from_a_string(exported):
    gen, out, _ = exported
    pipe = og.LLMPipeline(str(out / "genai"), "CPU", **F32)
    ids = gen.tokenizer(PROMPT)["input_ids"]
    assert list(pipe.get_tokenizer().encode(PROMPT).input_ids.data[0]) == ids  # the converted tokenizer
    want = _torch_tokens(gen.model, ids, 12)
    assert len(set(want)) > 3  # real text, not one repeated token
    text = pipe.generate(PROMPT, _config(pipe, 12))  # string in, string out
    assert text == pipe.get_tokenizer().decode(want)
    got = pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), _config(pipe, 12))
    assert list(got.tokens[0]) == want


def test_llmpipeline_beam_search_matches_pytorch(exported):
    gen, out, _ = exported
    pipe = og.LLMPipeline(str(out / "genai"), "CPU", **F32)
    ids = gen.tokenizer(PROMPT)["input_ids"]
    want = _torch_tokens(gen.model, ids, 10, num_beams=3)
    cfg = _config(pipe, 10, num_beams=3, num_beam_groups=1, num_return_sequences=1)
    got = pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), cfg)
    assert list(got.tokens[0]) == want
    assert pipe.generate(PROMPT, cfg) == pipe.get_tokenizer().decode(want)


def test_continuous_batching_serves_8_concurrent_prompts_like_8_pytorch_runs(exported):
    gen, out, _ = exported
    prompts = [" ".join(WORDS[: 2 + 2 * i]) for i in range(8)]  # 8 different lengths
    ids = [gen.tokenizer(p)["input_ids"] for p in prompts]
    assert len({len(i) for i in ids}) == 8
    want = [_torch_tokens(gen.model, i, 10) for i in ids]
    scheduler = og.SchedulerConfig()
    scheduler.cache_size, scheduler.max_num_seqs, scheduler.max_num_batched_tokens = 1, 8, 256
    cb = og.ContinuousBatchingPipeline(str(out / "genai"), scheduler, "CPU", F32)
    config = _config(cb, 10)
    results = cb.generate(prompts, [config] * 8)  # strings, scheduled together
    assert [r.m_generation_ids[0] for r in results] == [cb.get_tokenizer().decode(w) for w in want]
    tokens = cb.generate([ov.Tensor(np.array([i], dtype=np.int64)) for i in ids], [config] * 8)
    assert [list(r.m_generation_ids[0]) for r in tokens] == want


def test_verify_checks_the_genai_folder_in_genai_as_its_own_backend(exported):
    gen, out, _ = exported
    report = shapetrace.verify(out, gen, write=False)
    rows = [c for c in report.checks if c.backend == "genai"]
    assert [(c.graph, c.reference, c.input_set, c.output) for c in rows] == [("genai/", "torch", "resized", "tokens")]
    assert rows[0].passed, rows[0].message
    assert rows[0].sizes["prompt"] != 3 and rows[0].sizes["new_tokens"] == 8  # another length than "a b c"
    assert rows[0].result.exact and rows[0].result.shape == (8,)
    assert "genai" in report.backends and "genai/" in str(report)
    page = render_html(read(out), report)  # the HTML report: a section of its own
    section = page[page.index('id="genai"'):]
    assert "LLMPipeline" in section and "tokens" in section and '<span class="pass">pass</span>' in section
    alone = shapetrace.verify(out, write=False)  # from the folder alone: no PyTorch to compare with
    assert not [c for c in alone.checks if c.backend == "genai"]
    assert any("genai/" in n and "pass the live object" in n for n in alone.notes)


def test_the_genai_check_fails_when_the_folder_computes_something_else(exported):
    gen, out, _ = exported
    head = gen.model.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():  # the live model now differs from what the folder holds
            head.copy_(torch.roll(saved, 1, dims=0))
        report = shapetrace.verify(out, gen, write=False)
    finally:
        with torch.no_grad():
            head.copy_(saved)
    row = next(c for c in report.checks if c.backend == "genai")
    assert not row.passed and row.verdict == "FAIL" and "differ" in row.message
    assert not report.passed


def test_an_object_genai_has_no_pipeline_for_exports_the_rest_and_says_why(tmp_path):
    from shapetrace.testing import text_classification_pipeline

    clf = text_classification_pipeline()
    with shapetrace.record(clf):
        clf("a chef in the kitchen")
    with pytest.warns(UserWarning, match=r"genai=True: no genai/ folder: no GenAI pipeline for this "
                                         r"TextClassificationPipeline: LLMPipeline needs .*model \("
                                         r"BertForSequenceClassification: no generate\); WhisperPipeline needs an "
                                         r"encoder-decoder's generate from audio features.*no generate\)"):
        result = shapetrace.export_all(clf, tmp_path, progress=False, genai=True)
    assert result.ok and result.parity, str(result)
    assert not (tmp_path / "genai").exists()
    assert "no generate" in read(tmp_path).genai["error"] and "pipeline" not in read(tmp_path).genai
    assert (tmp_path / result.manifest.graph("model").file("openvino")).is_file()


def test_cli_export_genai_writes_the_folder_llmpipeline_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    torch.manual_seed(0)
    tok = _tokenizer()
    model = _gpt2(tok)
    model.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "shapetrace", "export", tmp_path / "gpt2", out, "--genai",
                           "--no-verify", "--formats", "openvino", "--prompt", "a b c", "--max-new-tokens", "4"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "genai/" in proc.stdout and "LLMPipeline" in proc.stdout
    pipe = og.LLMPipeline(str(out / "genai"), "CPU", **F32)
    ids = tok(PROMPT)["input_ids"]
    got = pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), _config(pipe, 8))
    assert list(got.tokens[0]) == _torch_tokens(model, ids, 8)


# ------------------------------------------------------------------------------------------------ WhisperPipeline
@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from shapetrace.testing import speech_recognition_pipeline

    asr = speech_recognition_pipeline()
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1  # one 1-second chunk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(asr):
            asr(audio, generate_kwargs=dict(max_new_tokens=5))
        out = tmp_path_factory.mktemp("whisper") / "export"
        result = shapetrace.export_all(asr, out, progress=False, verify=False, genai=True, formats=("openvino",))
    return asr, out, result


def _clip(seed, samples):
    return np.random.default_rng(seed).standard_normal(samples).astype(np.float32) * 0.1


class _Tokens(og.StreamerBase):
    """The token ids GenAI generates, as they come."""

    def __init__(self):
        super().__init__()
        self.tokens = []

    def write(self, token):
        self.tokens += token if isinstance(token, list) else [token]
        return og.StreamingStatus.RUNNING

    def end(self):
        pass


def _torch_transcription(asr, audio, new_tokens, **kw):
    features = asr.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return asr.model.generate(features, max_new_tokens=new_tokens, do_sample=False, **kw)[0].tolist()


def test_the_genai_folder_has_the_layout_whisperpipeline_reads(whisper):
    asr, out, result = whisper
    assert all(result.graphs.values()), str(result)
    note = result.manifest.genai
    assert note == read(out).genai
    assert note["pipeline"] == "WhisperPipeline" and note["graph"] == "model"
    assert note["module_class"] == "WhisperForConditionalGeneration" and note["tokenizer"] == "WhisperTokenizer"
    folder = out / "genai"
    for f in ("openvino_encoder_model.xml", "openvino_encoder_model.bin", "openvino_decoder_model.xml",
              "openvino_decoder_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json",
              "generation_config.json", "preprocessor_config.json"):
        assert (folder / f).is_file() and f in note["files"], f
    core = ov.Core()
    encoder = core.read_model(str(folder / "openvino_encoder_model.xml"))
    assert [p.get_any_name() for p in encoder.inputs] == ["input_features"] == note["encoder_inputs"]
    assert [p.get_any_name() for p in encoder.outputs] == ["last_hidden_state"]
    assert encoder.input("input_features").get_partial_shape()[1].get_length() == 16  # mel bins
    decoder = core.read_model(str(folder / "openvino_decoder_model.xml"))
    assert sorted(p.get_any_name() for p in decoder.inputs) == ["beam_idx", "encoder_hidden_states", "input_ids"]
    assert [p.get_any_name() for p in decoder.outputs] == ["logits"]
    assert decoder.input("beam_idx").get_element_type() == ov.Type.i32
    assert decoder.input("input_ids").get_partial_shape().is_dynamic
    assert sum(op.get_type_name() == "ReadValue" for op in decoder.get_ops()) == 4 == note["states"]  # 2 x k, v
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["is_multilingual"] is False  # no lang_to_id: generate detects no language, nor may GenAI
    assert generation["decoder_start_token_id"] == asr.model.generation_config.decoder_start_token_id
    assert json.loads((folder / "preprocessor_config.json").read_text())["nb_max_frames"] == 100


@pytest.mark.parametrize("samples", [12000, 7000])  # other lengths than the recorded 16000
def test_whisperpipeline_transcribes_other_audio_with_pytorchs_tokens(whisper, samples):
    asr, out, _ = whisper
    pipe = og.WhisperPipeline(str(out / "genai"), "CPU", INFERENCE_PRECISION_HINT="f32")
    audio = _clip(samples, samples)
    want = _torch_transcription(asr, audio, 20)
    assert len(want) == 20 and len(set(want)) > 3  # a real transcription, not one repeated token
    streamer = _Tokens()
    result = pipe.generate(audio.tolist(), max_new_tokens=20, streamer=streamer)  # raw audio in, text out
    assert streamer.tokens == want
    assert result.texts == [asr.tokenizer.decode(want, skip_special_tokens=True)]
    control = asr.model.generation_config
    framed = [control.decoder_start_token_id, control.no_timestamps_token_id, *want, control.eos_token_id]
    assert pipe.get_tokenizer().decode(framed) == result.texts[0]  # the detokenizer skips Whisper's control tokens


def test_whisperpipeline_beam_search_matches_pytorch(whisper):
    asr, out, _ = whisper
    pipe = og.WhisperPipeline(str(out / "genai"), "CPU", INFERENCE_PRECISION_HINT="f32")
    audio = _clip(3, 3000)
    want = _torch_transcription(asr, audio, 12, num_beams=3)  # 3 beams: the decoder's batch 3, its cache reordered
    assert want != _torch_transcription(asr, audio, 12)  # the beams change the answer
    assert pipe.generate(audio.tolist(), max_new_tokens=12, num_beams=3).texts == [
        asr.tokenizer.decode(want, skip_special_tokens=True)]


def test_verify_checks_the_whisper_folder_in_genai(whisper):
    asr, out, _ = whisper
    report = shapetrace.verify(out, asr, write=False)
    row = next(c for c in report.checks if c.backend == "genai")
    assert (row.graph, row.output, row.input_set) == ("genai/", "tokens", "resized")
    assert row.passed, row.message
    assert row.result.shape == (8,) and row.sizes["audio_samples"] != 16000  # another clip than the recorded one


def test_the_whisper_writer_says_what_it_needs(whisper):
    from shapetrace._export.genai import whisper as writer
    from shapetrace._export.genai.common import Target

    asr, out, result = whisper
    with pytest.raises(ValueError, match=r"WhisperPipeline computes the features itself from "
                                         r"preprocessor_config.json, and the object holds no feature extractor"):
        writer.write(asr.model, Target("model", asr.model, {"cache_arg": "cache"}), out / "unused")
    holder = type("Holder", (), {})()
    holder.feature_extractor = asr.feature_extractor
    with pytest.raises(ValueError, match=r"returns text through the converted tokenizer, and the object holds none"):
        writer.write(holder, Target("model", asr.model, {"cache_arg": "cache"}), out / "unused")

# ------------------------------------------------------------------------------------------------ text to image
T2I_PROMPT = "a photo of a cat on a red chair at night"  # the recording ran on the examples' default prompt
T2I = dict(num_inference_steps=3, guidance_scale=7.0, height=64, width=64)


class _Latents(og.Generator):
    """GenAI's random generator handing out the given initial latents (the one ``randn_tensor`` call a text-to-image
    run makes), so that GenAI and PyTorch start from the same noise."""

    def __init__(self, values):
        super().__init__()
        self.values, self.shapes = values, []

    def next(self):
        raise AssertionError("a text-to-image run draws whole tensors only")

    def randn_tensor(self, shape):
        self.shapes.append(tuple(shape))
        return ov.Tensor(self.values.copy())


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def _torch_image(pipe, prompt, noise):
    """PyTorch's image as GenAI gives it: uint8 HWC (``latents=`` is scaled by the scheduler's init sigma there too)."""
    image = pipe(prompt, latents=noise.clone(), output_type="np", **T2I).images[0]
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def t2i_exported(request, tmp_path_factory):
    from shapetrace.testing.examples import EXAMPLES

    example = EXAMPLES[request.param]
    pipe = example.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(pipe):
            example.run(pipe)
        out = tmp_path_factory.mktemp(request.param) / "export"
        result = shapetrace.export_all(pipe, out, progress=False, verify=False, genai=True, formats=("openvino",))
    return pipe, out, result


def test_the_text2image_folder_has_the_layout_genai_reads(t2i_exported):
    pipe, out, result = t2i_exported
    assert all(result.graphs.values()), str(result)
    note = result.manifest.genai
    assert note == read(out).genai and note["pipeline"] == "Text2ImagePipeline" and note["graph"] == "unet"
    folder = out / "genai"
    two = "text_encoder_2" in pipe.components
    assert json_load(folder / "model_index.json")["_class_name"] == type(pipe).__name__ == note["class_name"]
    assert json_load(folder / "scheduler" / "scheduler_config.json")["_class_name"] == type(pipe.scheduler).__name__
    parts = ["text_encoder", "unet", "vae_decoder", "vae_encoder"] + ["text_encoder_2"] * two
    for part in parts:
        assert (folder / part / "openvino_model.xml").is_file() and (folder / part / "config.json").is_file(), part
    for tok in ["tokenizer"] + ["tokenizer_2"] * two:
        assert (folder / tok / "openvino_tokenizer.xml").is_file(), tok
    core = ov.Core()
    unet = core.read_model(str(folder / "unet" / "openvino_model.xml"))
    names = sorted(p.get_any_name() for p in unet.inputs)
    assert names == sorted(["sample", "timestep", "encoder_hidden_states"] + ["text_embeds", "time_ids"] * two)
    assert unet.input("timestep").get_element_type() == ov.Type.i64  # what GenAI feeds: i64 [1]
    assert unet.input("timestep").get_partial_shape() == ov.PartialShape([1])
    assert note["parts"]["unet"]["changed"][-1].endswith("-> i64 [1]")  # recorded as a scalar
    encoder = core.read_model(str(folder / "vae_encoder" / "openvino_model.xml"))
    assert [p.get_any_name() for p in encoder.outputs] == ["latent_parameters"]
    if two:  # GenAI reads hidden_states[-2] at output num_hidden_layers + 1
        layers = pipe.text_encoder.config.num_hidden_layers
        te = core.read_model(str(folder / "text_encoder" / "openvino_model.xml"))
        assert te.outputs[layers + 1].get_any_name() == f"hidden_states.{layers - 1}"


def test_text2imagepipeline_draws_pytorchs_image_from_the_same_latents(t2i_exported):
    pipe, out, _ = t2i_exported
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    want = _torch_image(pipe, T2I_PROMPT, noise)
    assert want.std() > 10  # an image, not a flat field
    genai = og.Text2ImagePipeline(str(out / "genai"), "CPU", INFERENCE_PRECISION_HINT="f32")
    latents = _Latents(noise.numpy())
    got = genai.generate(T2I_PROMPT, generator=latents, **T2I).data[0]
    assert latents.shapes == [(1, 4, 8, 8)]  # our noise was the one GenAI drew
    assert got.shape == want.shape and got.dtype == np.uint8
    assert _psnr(got, want) >= 40, _psnr(got, want)
    assert _psnr(got, _torch_image(pipe, "dog", noise)) < 35  # the prompt went through GenAI's tokenizer and encoder


def test_verify_checks_the_text2image_folder_in_genai(t2i_exported):
    pipe, out, _ = t2i_exported
    report = shapetrace.verify(out, pipe, write=False)
    row = next(c for c in report.checks if c.backend == "genai")
    assert (row.graph, row.reference, row.input_set, row.output) == ("genai/", "torch", "new-prompt", "image")
    assert row.passed, row.message
    assert row.sizes["psnr_db"] >= 40 and row.sizes["height"] == row.sizes["width"] == 64
    assert row.result.shape == (64, 64, 3)


def test_an_image_to_image_pipeline_gets_no_text2image_folder():
    from shapetrace._export.genai import text2image
    from shapetrace._export.genai.common import NoGenaiPipeline
    from shapetrace.testing import img2img_pipeline

    with pytest.raises(NoGenaiPipeline, match=r"Text2ImagePipeline draws from a prompt alone; this "
                                              r"StableDiffusionImg2ImgPipeline's call takes an image \(GenAI's "
                                              r"Image2ImagePipeline"):
        text2image.find(img2img_pipeline(), None, [])


def test_a_controlnet_pipeline_exports_the_rest_and_says_why_there_is_no_genai_folder(tmp_path):
    from shapetrace.testing.examples import EXAMPLES

    example = EXAMPLES["controlnet"]
    pipe = example.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(pipe):
            example.run(pipe)
    with pytest.warns(UserWarning, match=r"no genai/ folder: no GenAI pipeline for this "
                                         r"StableDiffusionControlNetPipeline"):
        result = shapetrace.export_all(pipe, tmp_path, progress=False, verify=False, genai=True,
                                       formats=("openvino",))
    assert sorted(result.graphs) == sorted(example.expected_graphs) and all(result.graphs.values()), str(result)
    assert not (tmp_path / "genai").exists()
    why = read(tmp_path).genai["error"]
    assert "pipeline" not in read(tmp_path).genai
    assert "Text2ImagePipeline takes the components" in why
    assert "this pipeline also has 'controlnet' (ControlNetModel), which GenAI's pipeline would not run" in why
    assert (tmp_path / result.manifest.graph("unet").file("openvino")).is_file()


def json_load(path):
    import json

    return json.loads(path.read_text())


def test_text2image_find_says_which_component_has_no_recorded_graph():
    from shapetrace._export.genai import text2image
    from shapetrace._export.genai.common import NoGenaiPipeline
    from shapetrace.testing.diffusion import sd_pipeline

    with pytest.raises(NoGenaiPipeline, match=r"needs text_encoder\.forward exported, and no successful recorded "
                                              r"graph is of it; record a run of the pipeline that calls it"):
        text2image.find(sd_pipeline(), None, [])  # a pipeline whose run was not recorded
    with pytest.raises(NoGenaiPipeline, match=r"needs a diffusers pipeline .* this Linear has none"):
        text2image.find(torch.nn.Linear(2, 2), None, [])
