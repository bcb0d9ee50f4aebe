"""``export_all(..., genai=True)``: the ``genai/`` folder OpenVINO GenAI opens as it is.

Tiny GPT-2 and Llama-style text-generation pipelines (random weights, offline) are recorded on one prompt and
exported; GenAI's own ``LLMPipeline`` and ``ContinuousBatchingPipeline`` then run the folder, strings in and out
through the converted tokenizer, and give PyTorch's tokens at other prompt lengths; ``verify`` runs the folder in
GenAI as a backend of its own. An object GenAI has no pipeline for exports everything else and says why there is no
folder. WhisperPipeline and Text2ImagePipeline: test_genai_whisper.py, test_genai_text2image.py (files of their own,
so that the test workers share them out).
"""

from __future__ import annotations

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
    report = shapetrace.verify(out, gen, write=False, backends=("openvino",))
    rows = [c for c in report.checks if c.backend == "genai"]
    assert [(c.graph, c.reference, c.input_set, c.output) for c in rows] == [("genai/", "torch", "resized", "tokens")]
    assert rows[0].passed, rows[0].message
    assert rows[0].sizes["prompt"] != 3 and rows[0].sizes["new_tokens"] == 8  # another length than "a b c"
    assert rows[0].result.exact and rows[0].result.shape == (8,)
    assert "genai" in report.backends and "genai/" in str(report)
    page = render_html(read(out), report)  # the HTML report: a section of its own
    section = page[page.index('id="genai"'):]
    assert "LLMPipeline" in section and "tokens" in section and '<span class="pass">pass</span>' in section
    alone = shapetrace.verify(out, write=False, backends=("openvino",))  # from the folder alone: no PyTorch to compare with
    assert not [c for c in alone.checks if c.backend == "genai"]
    assert any("genai/" in n and "pass the live object" in n for n in alone.notes)


def test_the_genai_check_fails_when_the_folder_computes_something_else(exported):
    gen, out, _ = exported
    if gen.model.config.model_type != "gpt2":
        pytest.skip("one decoder is enough to show a failing row (the check is the same code for both)")
    head = gen.model.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():  # the live model now differs from what the folder holds
            head.copy_(torch.roll(saved, 1, dims=0))
        report = shapetrace.verify(out, gen, write=False, backends=("openvino",))
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
