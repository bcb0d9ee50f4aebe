"""OpenVINO GenAI on shapetrace's export, offline: record an application object that holds a causal LM and its
tokenizer, export with genai=True, and run the genai/ folder in GenAI's LLMPipeline and ContinuousBatchingPipeline
-- strings in and out through the converted tokenizer, the same tokens as PyTorch at other prompt lengths.

    .venv/bin/python examples/genai_llm.py [OUT]
"""

import sys
import warnings

import numpy as np
import openvino as ov
import openvino_genai as og
import torch
import transformers

import shapetrace
from shapetrace.testing import tiny_bert_tokenizer

warnings.simplefilter("ignore")
out = sys.argv[1] if len(sys.argv) > 1 else "genai-out"
torch.manual_seed(0)


class Assistant:
    """Any object holding a model: here a Llama-style decoder (rotary positions, grouped-query attention)."""

    def __init__(self):
        self.tokenizer = tiny_bert_tokenizer()
        config = transformers.LlamaConfig(vocab_size=len(self.tokenizer), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          initializer_range=0.5, eos_token_id=self.tokenizer.sep_token_id)
        self.model = transformers.LlamaForCausalLM(config).eval()

    def reply(self, text, n=12):
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        return self.model.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1]:].tolist()


app = Assistant()
with shapetrace.record(app):
    app.reply("a b c", n=6)
result = shapetrace.export_all(app, out, overwrite=True, progress=False, genai=True)
print(result)
row = next(c for c in result.parity.checks if c.backend == "genai")  # verify ran the folder in GenAI too
print(f"{result.parity.summary()}; in GenAI: {row.where}: {row.verdict}")

f32 = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"}  # exact f32, as the export's own IR
pipe = og.LLMPipeline(f"{out}/genai", "CPU", **f32)
prompt = "chef in the kitchen with a knife and a cat"
text = pipe.generate(prompt, max_new_tokens=12, do_sample=False)
want = app.reply(prompt)
print(f"GenAI LLMPipeline: {text!r}")
print(f"PyTorch:           {pipe.get_tokenizer().decode(want)!r}")
ids = np.array([app.tokenizer(prompt).input_ids], dtype=np.int64)
print("tokens identical:", list(pipe.generate(ov.Tensor(ids), max_new_tokens=12, do_sample=False).tokens[0]) == want)

words = prompt.split()
prompts = [" ".join(words[: 2 + i]) for i in range(8)]
cb = og.ContinuousBatchingPipeline(f"{out}/genai", og.SchedulerConfig(), "CPU", f32)
config = og.GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=app.tokenizer.sep_token_id)
served = cb.generate(prompts, [config] * 8)  # 8 requests of 8 prompt lengths, scheduled together
same = [r.m_generation_ids[0] == cb.get_tokenizer().decode(app.reply(p)) for r, p in zip(served, prompts)]
print(f"ContinuousBatchingPipeline, 8 concurrent prompts: {sum(same)} of 8 identical to PyTorch")
