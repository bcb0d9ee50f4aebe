"""Offline tokenizers with tiny vocabularies: :func:`tiny_clip_tokenizer` (CLIP BPE) and :func:`tiny_bert_tokenizer`
(WordPiece).

Both write their vocabulary files into a folder (a fresh temporary one by default) and load them with the real
transformers classes; nothing is downloaded.  Every id of the CLIP tokenizer is below :data:`CLIP_VOCAB_SIZE`, the
``vocab_size`` of the tiny CLIP text encoders of :mod:`shapetrace.testing.diffusion`.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

from ._support import require

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import BertTokenizer, CLIPTokenizer

__all__ = ["CLIP_VOCAB_SIZE", "WHISPER_SPECIAL_TOKENS", "tiny_bert_tokenizer", "tiny_clip_tokenizer",
           "tiny_whisper_tokenizer"]

#: ``vocab_size`` of every tiny CLIP text encoder; every tokenizer id is below it.
CLIP_VOCAB_SIZE = 1000

# Words the tiny tokenizers know whole; anything else falls back to pieces/characters.
_WORDS = (
    "a an the of in on at with and to by for from is "
    "chef kitchen cook cooking food photo portrait painting picture drawing "
    "man woman person people child girl boy dancer dancing standing sitting running walking "
    "cat dog horse bird astronaut riding city street beach forest mountain room house "
    "red green blue yellow white black bright dark light "
    "high quality best detailed realistic beautiful small big old young"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte mapped to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _learn_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Classic BPE training on ``words`` (CLIP style, ``</w>`` on the last symbol) until each is one symbol.

    Applying the learned merges in rank order reproduces the training
    segmentation, so every word of ``words`` becomes a single token.  Ties
    between equally frequent pairs break lexicographically: deterministic.
    """
    corpus = [[*w[:-1], w[-1] + "</w>"] for w in dict.fromkeys(words)]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in itertools.pairwise(symbols):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for symbols in corpus:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                i += 1


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: 256 byte symbols (bare and ``</w>``), merged words, specials last."""
    alphabet = list(_bytes_to_unicode().values())
    tokens: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges = _learn_bpe(_WORDS)
    tokens += dict.fromkeys(a + b for a, b in merges if a + b not in tokens)
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # like real CLIP: specials have the highest ids
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) > CLIP_VOCAB_SIZE:  # pragma: no cover - guards edits to _WORDS
        raise AssertionError(f"tiny CLIP vocab has {len(vocab)} tokens, more than {CLIP_VOCAB_SIZE}")
    return vocab, [f"{a} {b}" for a, b in merges]


def tiny_clip_tokenizer(directory: str | os.PathLike[str] | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a tiny vocabulary (< ``CLIP_VOCAB_SIZE`` ids), built offline.

    ``vocab.json`` and ``merges.txt`` are written to ``directory`` (a temporary folder,
    removed once the tokenizer is built, when ``None``).  The vocabulary holds the 256
    byte-level symbols (bare and with ``</w>``) so any text tokenizes without
    unknown tokens, the pieces of BPE merges learned on a small list of
    prompt words, each of which is one token (``"chef in the kitchen"`` is
    ``[bos, chef, in, the, kitchen, eos]``), and ``<|startoftext|>`` /
    ``<|endoftext|>`` with the two highest ids (703 ids in all).  ``pad_token`` is
    ``<|endoftext|>`` as in Stable Diffusion 1.x; ``model_max_length`` is 77.
    """
    if directory is None:  # the tokenizer reads its files when built: a temporary folder is enough
        with tempfile.TemporaryDirectory(prefix="shapetrace-clip-") as tmp:
            return tiny_clip_tokenizer(tmp)
    transformers = require("transformers")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges()
    vocab_file = os.path.join(directory, "vocab.json")
    merges_file = os.path.join(directory, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer(vocab_file, merges_file, model_max_length=77)


def tiny_bert_tokenizer(directory: str | os.PathLike[str] | None = None) -> BertTokenizer:
    """A lower-casing WordPiece ``BertTokenizer`` built from a tiny ``vocab.txt``.

    The file is written to ``directory`` (a temporary folder,
    removed once the tokenizer is built, when ``None``).  It holds the five specials, ``a``-``z`` and ``##a``-``##z``,
    digits, punctuation and the same whole words as :func:`tiny_clip_tokenizer`.
    """
    if directory is None:  # the tokenizer reads its file when built: a temporary folder is enough
        with tempfile.TemporaryDirectory(prefix="shapetrace-bert-") as tmp:
            return tiny_bert_tokenizer(tmp)
    transformers = require("transformers")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += letters + ["##" + c for c in letters] + list("0123456789") + list(".,!?'\"-:;()")
    tokens += [w for w in dict.fromkeys(_WORDS) if len(w) > 1]
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return transformers.BertTokenizer(vocab_file, model_max_length=64)


#: Whisper's control tokens, added after the byte-level pieces (in this order: ids ``len(vocab)`` ...).
WHISPER_SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                          "<|notimestamps|>", "<|nocaptions|>", "<|startofprev|>", "<|startoflm|>")


def tiny_whisper_tokenizer(directory: str | os.PathLike[str] | None = None) -> Any:
    """A byte-level BPE ``WhisperTokenizer`` with the pieces of :func:`tiny_clip_tokenizer`'s vocabulary (no merges:
    text tokenizes to bytes) and Whisper's control tokens (:data:`WHISPER_SPECIAL_TOKENS`) added after them."""
    if directory is None:  # the tokenizer reads its files when built: a temporary folder is enough
        with tempfile.TemporaryDirectory(prefix="shapetrace-whisper-") as tmp:
            return tiny_whisper_tokenizer(tmp)
    transformers = require("transformers")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    vocab: dict[str, int] = {}
    for piece in _clip_vocab_and_merges()[0]:
        vocab.setdefault(piece.replace("</w>", ""), len(vocab))
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    tok = transformers.WhisperTokenizer(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"))
    tok.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIAL_TOKENS)})
    return tok
