"""Text generation with a KV cache, offline: record a pipeline("text-generation"), export the decoder step, and
generate again on OpenVINO -- the same tokens as PyTorch, at another prompt length and another number of tokens.

    .venv/bin/python examples/text_generation.py [OUT]
"""

import sys
import warnings

import torch
import transformers

import shapetrace
from shapetrace.testing import tiny_bert_tokenizer

warnings.simplefilter("ignore")
out = sys.argv[1] if len(sys.argv) > 1 else "gen-out"
torch.manual_seed(0)
tok = tiny_bert_tokenizer()
config = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                 initializer_range=0.5, pad_token_id=tok.pad_token_id)
gen = transformers.pipeline("text-generation", model=transformers.GPT2LMHeadModel(config).eval(), tokenizer=tok)

with shapetrace.record(gen) as rec:
    gen("a b c", max_new_tokens=6, do_sample=False)
print(rec)
result = shapetrace.export_all(gen, out, overwrite=True, progress=False)
print(result)
print(result.parity.summary())

prompt = "chef in the kitchen with a knife and a cat"
want = gen(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
with shapetrace.load(gen, out, backend="openvino") as runtime:
    got = gen(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
print(runtime.summary())
print(f"PyTorch:  {want!r}\nOpenVINO: {got!r}\nidentical: {got == want}")
