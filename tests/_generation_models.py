"""The tiny models the generation tests build offline (random weights, wide init so that greedy decoding
does not repeat one token): decoders, encoder-decoders with their recorded and new calls, and the plain
holder a model card's snippet uses; shared by test_generation.py and test_ir_only.py."""

import torch
import transformers


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


def _sliding(tok):  # a sliding-window cache layer beside a full one: a Python token counter in the cache
    config = transformers.VaultGemmaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, head_dim=8,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           initializer_range=0.5, max_position_embeddings=128, sliding_window=64,
                                           pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                                           eos_token_id=None)
    return transformers.VaultGemmaForCausalLM(config).eval()


class _Holder:
    """A plain application object holding a model, as a model card's snippet does."""


def _bart():
    config = transformers.BartConfig(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.5, pad_token_id=1,
                                     bos_token_id=0, eos_token_id=None, decoder_start_token_id=2,
                                     forced_eos_token_id=None)
    return transformers.BartForConditionalGeneration(config).eval()


def _blip():
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    text = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=64, encoder_hidden_size=32, bos_token_id=30, pad_token_id=0,
                sep_token_id=127, eos_token_id=127)
    return transformers.BlipForConditionalGeneration(transformers.BlipConfig(vision_config=vision,
                                                                             text_config=text)).eval()


def _whisper():
    config = transformers.WhisperConfig(vocab_size=128, num_mel_bins=16, d_model=32, encoder_layers=2,
                                        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=50,
                                        max_target_positions=64, init_std=0.5, pad_token_id=0, bos_token_id=1,
                                        eos_token_id=2, decoder_start_token_id=3, suppress_tokens=[],
                                        begin_suppress_tokens=[])
    return transformers.WhisperForConditionalGeneration(config).eval()


# name: (builder, recorded call, new call, new input, graphs expected)
SEQ2SEQ = {
    # the encoder runs once inside generate (a framework method): its call is a graph of its own
    "bart": (_bart, lambda m: m.generate(torch.randint(3, 128, (1, 7)), do_sample=False, max_new_tokens=5),
             lambda m, x: m.generate(x, do_sample=False, max_new_tokens=8), lambda: torch.randint(3, 128, (1, 11)),
             ["model.model.encoder", "model", "model@2"]),
    # BLIP's own generate loops over its text decoder: not a graph; the vision model and the decoder step are
    "blip": (_blip, lambda m: m.generate(pixel_values=torch.randn(1, 3, 32, 32), do_sample=False, max_new_tokens=5),
             lambda m, x: m.generate(pixel_values=x, do_sample=False, max_new_tokens=8),
             lambda: torch.randn(2, 3, 32, 32), ["model.vision_model", "model.text_decoder", "model.text_decoder@2"]),
    # Whisper's own generate: a loop over the encoder (once) and the decoder step
    "whisper": (_whisper, lambda m: m.generate(torch.randn(1, 16, 100), do_sample=False, max_new_tokens=5),
                lambda m, x: m.generate(x, do_sample=False, max_new_tokens=8), lambda: torch.randn(2, 16, 100),
                ["model.model.encoder", "model", "model@2"]),
}
