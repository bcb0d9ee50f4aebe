"""Text classification offline: :func:`text_classification_pipeline`, a transformers ``text-classification``
pipeline around a tiny random BERT and the offline :func:`~shapetrace.testing.tiny_bert_tokenizer`.

transformers is imported inside the builder (:func:`~shapetrace.testing._support.require`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._support import require, seeded
from .tokenizers import tiny_bert_tokenizer

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import TextClassificationPipeline

__all__ = ["text_classification_pipeline"]


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
