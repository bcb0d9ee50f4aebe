"""Text pipelines offline: :func:`text_classification_pipeline` (a tiny random BERT with
:func:`~shapetrace.testing.tiny_bert_tokenizer`) and :func:`speech_recognition_pipeline` (a tiny random Whisper with
:func:`~shapetrace.testing.tiny_whisper_tokenizer` and a 1-second feature extractor).

transformers is imported inside the builder (:func:`~shapetrace.testing._support.require`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._support import require, seeded
from .tokenizers import WHISPER_SPECIAL_TOKENS, tiny_bert_tokenizer, tiny_whisper_tokenizer

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import TextClassificationPipeline

__all__ = ["text_classification_pipeline", "speech_recognition_pipeline"]


def text_classification_pipeline(seed: int = 0) -> TextClassificationPipeline:
    """A transformers ``text-classification`` pipeline around a tiny random ``BertForSequenceClassification``.

    2 layers, hidden 32, 4 heads, 2 labels (``NEGATIVE`` / ``POSITIVE``), CPU.
    """
    transformers = require("transformers")

    tokenizer = tiny_bert_tokenizer()
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    with seeded(seed):
        model = transformers.BertForSequenceClassification(config).eval()
    return transformers.pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")


def speech_recognition_pipeline(seed: int = 0) -> Any:
    """A transformers ``automatic-speech-recognition`` pipeline around a tiny random ``WhisperForConditionalGeneration``.

    16 mel bins, 1-second chunks (100 frames), 2 encoder and 2 decoder layers, d_model 32; no early stop (the end
    token is never forced), CPU. Feed it ``numpy`` audio at 16 kHz.
    """
    transformers = require("transformers")

    tokenizer = tiny_whisper_tokenizer()
    ids = dict(zip(WHISPER_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(WHISPER_SPECIAL_TOKENS))))
    features = transformers.WhisperFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160,
                                                    chunk_length=1, n_fft=400)
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=50, max_target_positions=64, init_std=0.5, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"], suppress_tokens=[], begin_suppress_tokens=[])
    with seeded(seed):
        model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]
    return transformers.pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                                 feature_extractor=features, device="cpu")
