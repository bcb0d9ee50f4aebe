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


def _tokenizer():
    from shapetrace.testing import tiny_bert_tokenizer

    return tiny_bert_tokenizer()


def _gpt2(tok):
    # a wide weight init: random logits that are not flat, so greedy decoding does not repeat one token
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                     initializer_range=0.5,
                                     bos_token_id=tok.cls_token_id, eos_token_id=None,
                                     pad_token_id=tok.pad_token_id)
    return transformers.GPT2LMHeadModel(config).eval()


def _llama(tok):  # rotary position embeddings, grouped-query attention (4 query heads share 2 key/value heads)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      initializer_range=0.5,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                                      eos_token_id=None)  # no early stop: every run has its length
    return transformers.LlamaForCausalLM(config).eval()


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
        result = shapetrace.export_all(gen, out, progress=False)
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
