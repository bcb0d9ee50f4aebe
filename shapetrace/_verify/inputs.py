"""The ``resized`` input set of verify: new inputs for a graph with every dynamic dim set to another valid size.

Float inputs are drawn from a normal distribution with the example's mean and std; integer inputs (token ids,
timesteps) uniformly within the recorded ``value_range``; constant inputs stay constant; masks (0/1 inputs named
``*mask*``) are ones followed by zeros, like padding. Seeded by the graph's name: the same folder always gives the
same inputs. The sizes themselves come from :func:`shapetrace.constraints.alternative_sizes`. When PyTorch refuses
such a set, verify tries others, the last one keeping the example's integer inputs and extending them
(:func:`extended`): a multimodal prompt keeps its placeholder tokens, their count still that of its features.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterator, Mapping, Sequence

import numpy as np

from .. import constraints
from ..manifest import GraphEntry

__all__ = ["resized_inputs", "input_sizes", "other_sets", "extended"]

_FLOAT_NP = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32, "float64": np.float64}


def resized_inputs(entry: GraphEntry, example: Mapping[str, np.ndarray], sizes: Mapping[str, int],
                   seed: int = 0, keep_pattern: bool = False) -> dict[str, np.ndarray]:
    """A new input set for ``entry`` with dynamic dims set to ``sizes`` (rules in the module docstring).
    ``keep_pattern``: integer inputs are the example's, extended (:func:`extended`) instead of drawn anew."""
    rng = np.random.default_rng([seed, zlib.crc32(entry.name.encode())])
    feed: dict[str, np.ndarray] = {}
    for spec in entry.inputs:
        name, dtype = spec.name, spec.dtype
        ex = np.asarray(example[name]) if name in example else None
        shape = []
        for d, s in enumerate(spec.shape):
            if isinstance(s, int):
                shape.append(s)
            elif s in sizes:
                shape.append(int(sizes[s]))
            else:  # an expression of named dims (a mask one longer than the cache): computed; else as recorded
                shape.append(_expression_size(s, sizes, int(spec.example_shape[d])))
        integer = dtype not in _FLOAT_NP and dtype != "bool"
        if keep_pattern and integer and ex is not None and ex.ndim == len(shape) and ex.size:
            feed[name] = extended(ex, tuple(shape), mask=_is_mask(name, ex.astype(np.float64)))
        else:
            feed[name] = _draw(rng, name, dtype, tuple(shape), ex, spec.value_range)
    return feed


def _expression_size(text: str, sizes: Mapping[str, int], recorded: int) -> int:
    try:
        value = constraints.evaluate(text, sizes)
    except (KeyError, ValueError, ArithmeticError):
        return recorded
    return int(value) if isinstance(value, int) and value >= 0 else recorded


def extended(ex: np.ndarray, shape: tuple[int, ...], mask: bool = False) -> np.ndarray:
    """``ex`` cut or grown to ``shape`` keeping what it holds: new rows (every axis but the last) copy existing
    ones in turn; new positions on the last axis are 1 in a mask (attended), continue a count (position ids), and
    are otherwise the example's rarest values (ordinary tokens: an image or audio placeholder token repeats, and a
    model that counts them against its features refuses a prompt with more or fewer of them). A prompt of one value
    throughout (placeholders only) grows by a value it does not hold (the smallest such non-negative integer), so
    that no count of what it holds changes."""
    out = ex
    for axis, n in enumerate(shape):
        cur = out.shape[axis]
        if n <= cur:
            out = np.take(out, range(n), axis=axis)
        elif axis < len(shape) - 1:
            out = np.concatenate([out, np.take(out, [i % cur for i in range(n - cur)], axis=axis)], axis=axis)
        else:
            tail_shape = (*out.shape[:-1], n - cur)
            if mask:
                tail = np.ones(tail_shape, ex.dtype)
            elif cur > 1 and bool((np.diff(out, axis=-1) == 1).all()):  # a count: go on counting
                tail = out[..., -1:] + np.arange(1, n - cur + 1, dtype=ex.dtype)
            else:
                values, counts = np.unique(ex, return_counts=True)
                rarest = values[counts == counts.min()] if len(values) > 1 else np.array([int(values[0] == 0)])
                tail = np.resize(rarest, tail_shape).astype(ex.dtype)
            out = np.concatenate([out, tail], axis=-1)
    return np.array(out, copy=True, order="C")  # ascontiguousarray would turn a 0-d input 1-d


def _draw(rng: np.random.Generator, name: str, dtype: str, shape: tuple[int, ...], ex: np.ndarray | None,
          value_range: Sequence[float] | None) -> np.ndarray:
    if dtype in _FLOAT_NP:
        np_dtype = _FLOAT_NP[dtype]
        if ex is None or ex.size == 0:
            return _normal(rng, 0.0, 1.0, shape, np_dtype)
        if np.all(ex == ex.flat[0]):
            return np.full(shape, float(ex.flat[0]), dtype=np_dtype)
        if _is_mask(name, ex):
            return _mask(rng, shape).astype(np_dtype)
        mean, std = _mean_std(ex)
        return _normal(rng, mean, std if math.isfinite(std) and std > 0 else 1.0, shape, np_dtype)
    if dtype == "bool":
        if ex is not None and ex.size and np.all(ex == ex.flat[0]):
            return np.full(shape, bool(ex.flat[0]))
        return _mask(rng, shape) if "mask" in name.lower() else rng.integers(0, 2, shape).astype(bool)
    np_dtype = np.dtype(dtype) if dtype.startswith(("int", "uint")) else np.int64
    if value_range is not None:
        lo, hi = int(value_range[0]), int(value_range[1])
    elif ex is not None and ex.size:
        lo, hi = int(ex.min()), int(ex.max())
    else:
        lo, hi = 0, 1
    if lo == hi:
        return np.full(shape, lo, dtype=np_dtype)
    if ex is not None and _is_mask(name, ex.astype(np.float64)):
        return _mask(rng, shape).astype(np_dtype)
    return rng.integers(lo, hi + 1, shape).astype(np_dtype)


#: Elements drawn / summed per step: float64 temporaries stay near 1 MiB whatever the input's size.
_CHUNK = 1 << 17


def _normal(rng: np.random.Generator, mean: float, std: float, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """``rng.normal(mean, std, shape).astype(dtype)`` -- the same values (one stream, drawn in order) -- without a
    float64 array of the whole size."""
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    for i in range(0, flat.size, _CHUNK):
        n = min(_CHUNK, flat.size - i)
        flat[i:i + n] = rng.normal(mean, std, n)
    return out


def _mean_std(ex: np.ndarray) -> tuple[float, float]:
    """NaN-ignoring mean and (population) std in float64, a chunk at a time (no float64 copy of ``ex``)."""
    flat = ex.reshape(-1)
    count, total = 0, 0.0
    for i in range(0, flat.size, _CHUNK):
        c = flat[i:i + _CHUNK].astype(np.float64)
        c = c[~np.isnan(c)]
        count, total = count + c.size, total + float(c.sum())
    if not count:
        return math.nan, math.nan
    mean, squares = total / count, 0.0
    for i in range(0, flat.size, _CHUNK):
        c = flat[i:i + _CHUNK].astype(np.float64)
        squares += float(np.square(c[~np.isnan(c)] - mean).sum())
    return mean, math.sqrt(squares / count)


def _is_mask(name: str, ex: np.ndarray) -> bool:
    return "mask" in name.lower() and bool(np.isin(ex, (0.0, 1.0)).all())


def _mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Ones then zeros along the last axis (at least one 1 per row), like a padded attention mask."""
    if not shape:
        return np.ones((), dtype=bool)
    n = shape[-1]
    lengths = rng.integers(max(1, n // 2), n + 1, shape[:-1]) if n else np.zeros(shape[:-1], dtype=np.int64)
    return np.arange(n) < np.asarray(lengths)[..., None]


def input_sizes(entry: GraphEntry, feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The size of each named dim in ``feed`` (first input that carries it)."""
    sizes: dict[str, int] = {}
    for spec in entry.inputs:
        arr = feed.get(spec.name)
        if arr is None:
            continue
        for d, s in enumerate(spec.shape):
            if isinstance(s, str) and d < arr.ndim and s in entry.dims:  # named dims; expressions follow them
                sizes.setdefault(s, int(arr.shape[d]))
    return sizes


#: Noise a sensitivity probe adds to float inputs, relative to max(rms, 1): about 8 float32 ulps at magnitude 1.
PROBE_NOISE = 2.0 ** -20


def perturbed(feed: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """``feed`` with tiny Gaussian noise on its float inputs (:data:`PROBE_NOISE` x max(rms, 1); integer and bool
    inputs unchanged): how much PyTorch's own output moves under it says how well float32 determines the output
    at these inputs (a normalisation of an exactly constant input -- an all-zero masked image -- amplifies any
    rounding: two runtimes that round differently may then disagree by O(1) while both are right)."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, a in feed.items():
        if np.issubdtype(a.dtype, np.floating) and a.size:
            scale = PROBE_NOISE * max(float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))), 1.0)
            a = (a + rng.standard_normal(a.shape) * scale).astype(a.dtype)
        out[n] = a
    return out


def other_sets(entry: GraphEntry, example: Mapping[str, np.ndarray],
                seed: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Resized input sets to try when PyTorch refuses the first: smaller sizes (a fixed position table), then every
    dim moved together by one (dims the model ties in Python: a mask one longer than the cache), then that -- and
    the batch dims alone, the others alone, and the dims only integer inputs have (the prompt's length, the features
    as recorded) -- with the example's token ids extended, not drawn (a multimodal prompt keeps as many placeholder
    tokens as it has features: more rows of both, or a longer prompt around the same images)."""
    smaller = constraints.alternative_sizes(entry.dims, entry.constraints, smaller_first=True)
    if smaller:
        yield "smaller sizes", resized_inputs(entry, example, smaller, seed)
    leading = {n for n, d in entry.dims.items() if any(s.endswith(".0") for s in d.sources)}  # batch-like
    integer = {i.name for i in entry.inputs if not i.dtype.startswith(("float", "bfloat", "complex"))}
    prompt = {n for n, d in entry.dims.items() if d.sources and all(s.rsplit(".", 1)[0] in integer
                                                                      for s in d.sources)} - leading
    for how, only in (("every dim", None), ("the batch dims", leading),
                      ("every dim but the batch's", set(entry.dims) - leading),
                      ("the prompt's length alone (features kept)", prompt)):
        sizes = constraints.shifted_sizes(entry.dims, entry.constraints, only=only)
        if not sizes:
            continue
        if only is None and sizes != smaller:
            yield "every dim moved by one", resized_inputs(entry, example, sizes, seed)
        yield f"{how} moved by one, the example's integer inputs extended", \
            resized_inputs(entry, example, sizes, seed, keep_pattern=True)
