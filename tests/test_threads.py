"""A loaded object called from several threads at once answers, in every thread, what the same calls answer one
after another (:func:`shapetrace.load`, :func:`shapetrace.load_pipeline`, and ``load(stateful=True)``, whose
decoder keeps its KV cache in the runtime: one cache per thread); two objects loaded at once keep their own state.

Each served graph runs one call at a time (a lock per graph; its runtime objects are not shared by two threads at
once); different graphs, and different loaded objects, run side by side."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import shapetrace
from shapetrace.testing import EXAMPLES
from shapetrace.testing.text import text_classification_pipeline

pytest.importorskip("openvino")
transformers = pytest.importorskip("transformers")

TEXTS = ["a cat", "chef in the kitchen with a knife", "a b c d e f g", "kitchen"]


def _at_once(fns):
    """Run every function of ``fns`` in a thread of its own, all released together, three times each; returns each
    one's answers and the errors raised."""
    barrier = threading.Barrier(len(fns))
    got = [[] for _ in fns]
    errors = []

    def work(i):
        try:
            barrier.wait()
            for _ in range(3):
                got[i].append(fns[i]())
        except Exception as e:  # surfaced by the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got, errors


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two text-classification pipelines (random weights, seeds 0 and 1), each exported to IR."""
    out = {}
    for seed in (0, 1):
        pipe = text_classification_pipeline(seed=seed)
        with shapetrace.record(pipe):
            EXAMPLES["text-classification"].run(pipe)
        folder = tmp_path_factory.mktemp(f"seed{seed}") / "o"
        shapetrace.export_all(pipe, folder, formats=("openvino",), progress=False, verify=False)
        out[seed] = (pipe, folder)
    return out


def _scores(pipe, text):
    return [(d["label"], d["score"]) for d in pipe(text, top_k=None)]


@pytest.mark.parametrize("how", ["load", "load_pipeline"])
def test_four_threads_answer_what_the_same_calls_answer_one_after_another(exports, how):
    pipe, folder = exports[0]
    if how == "load":
        runtime = shapetrace.load(pipe, folder)
        served = pipe
    else:
        served = shapetrace.load_pipeline(folder)
        runtime = shapetrace.runtime_of(served)
    with runtime:
        alone = [_scores(served, t) for t in TEXTS]
        got, errors = _at_once([lambda t=t: _scores(served, t) for t in TEXTS])
        calls = {s.graph: s.calls for s in runtime.stats()}
    assert errors == []
    assert got == [[a] * 3 for a in alone]
    assert len({str(a) for a in alone}) == len(TEXTS)  # four different answers, each in its own thread
    assert calls["model"] == 4 + 4 * 3  # every call counted


def test_two_objects_loaded_at_once_keep_their_own_weights_and_answers(exports):
    (a, folder_a), (b, folder_b) = exports[0], exports[1]
    want_a, want_b = _scores(a, TEXTS[1]), _scores(b, TEXTS[1])
    assert want_a != want_b  # two models, two answers
    with shapetrace.load(a, folder_a), shapetrace.load(b, folder_b):
        got, errors = _at_once([lambda: _scores(a, TEXTS[1]), lambda: _scores(b, TEXTS[1])] * 2)
    assert errors == []
    assert [g[0] for g in got] == [want_a, want_b, want_a, want_b]
    assert all(len(set(map(str, g))) == 1 for g in got)
    torch.testing.assert_close(torch.tensor([s for _, s in got[0][0]]), torch.tensor([s for _, s in want_a]),
                               rtol=1e-4, atol=1e-5)


def test_stateful_generation_from_four_threads_keeps_one_cache_per_thread(tmp_path):
    from shapetrace.testing import tiny_bert_tokenizer

    torch.manual_seed(0)
    tok = tiny_bert_tokenizer()
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                     initializer_range=0.5,  # logits not flat: greedy text that is not one token
                                     bos_token_id=tok.cls_token_id, eos_token_id=None, pad_token_id=tok.pad_token_id)
    gen = transformers.pipeline("text-generation", model=transformers.GPT2LMHeadModel(config).eval(), tokenizer=tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.record(gen):
            gen("a b c", max_new_tokens=4, do_sample=False)
        shapetrace.export_all(gen, tmp_path, progress=False, stateful=True, formats=("openvino",), verify=False)

    def text(prompt):
        return gen(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]

    want = [text(p) for p in TEXTS]  # PyTorch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with shapetrace.load(gen, tmp_path, backend="openvino", stateful=True):
            alone = [text(p) for p in TEXTS]
            got, errors = _at_once([lambda p=p: text(p) for p in TEXTS])
    assert errors == []
    assert alone == want
    # one shared cache would interleave the threads' sequences (a reset from one thread mid-way through another's)
    assert got == [[w] * 3 for w in want]
