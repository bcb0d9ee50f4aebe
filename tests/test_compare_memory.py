"""compare_arrays reads its arrays a chunk at a time: the same result as a one-shot float64 comparison, with extra
memory bounded by the chunk (a few MiB), not by the outputs' size."""

import math
import tracemalloc

import numpy as np
import pytest

from shapetrace._verify.compare import CHUNK, OutputComparison, compare_arrays


# ------------------------------------------------------------------------------- the one-shot rules, as they were
def _one_shot(out, ref, *, atol=1e-4, rtol=1e-3, exact=None):
    """The former one-shot implementation (whole arrays cast to float64), kept here as the reference."""
    out, ref = np.asarray(out), np.asarray(ref)
    if exact is None:
        exact = ref.dtype.kind in "biu"
    if exact:
        atol = rtol = 0.0
    nan = float("nan")
    a, b = out.astype(np.float64), ref.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        nan_mask = np.isnan(a) | np.isnan(b)
        same = (a == b) if not exact else (out == ref)
        diff = np.where(same, 0.0, np.abs(a - b))
        diff[nan_mask] = 0.0
        absref = np.abs(b)
        safe_ref = np.where((absref > 0) & np.isfinite(absref), absref, 1.0)
        inf_diff = np.isinf(diff)
        rel = np.where(diff == 0, 0.0, np.where((absref > 0) & ~inf_diff, diff / safe_ref, np.inf))
        rel[nan_mask] = 0.0
        valid = ~nan_mask
        n_valid = int(valid.sum())
        excess_atol = np.where(same, 0.0, diff - rtol * np.where(np.isinf(absref), 0.0, absref))
        excess_atol[nan_mask] = 0.0
        over_rtol = np.where(diff <= atol, 0.0, np.where((absref > 0) & ~inf_diff, (diff - atol) / safe_ref, np.inf))
        over_rtol[nan_mask | same] = 0.0
    nan_count = int(nan_mask.sum())
    max_abs = float(diff.max()) if n_valid else nan
    max_rel = float(rel.max()) if n_valid else nan
    mean_abs = float(diff[valid].mean()) if n_valid else nan
    needed_atol = max(0.0, float(excess_atol.max()))
    needed_rtol = float(over_rtol.max())
    cosine = _cosine(a[valid], b[valid]) if n_valid else nan
    passed = nan_count == 0 and (bool(same[valid].all()) if exact else needed_atol <= atol)
    if nan_count:
        worst = tuple(int(i) for i in np.argwhere(nan_mask)[0])
    else:
        score = excess_atol if not exact else diff
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), score.shape))
    counts = (int(np.isnan(a).sum()), int(np.isnan(b).sum()), int((~same).sum()))
    return dict(passed=passed, max_abs=max_abs, max_rel=max_rel, mean_abs=mean_abs, cosine=cosine,
                needed_atol=needed_atol, needed_rtol=needed_rtol, worst_index=worst, nan_count=nan_count,
                counts=counts)


def _cosine(a, b):
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    if np.array_equal(a, b):
        return 1.0
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
    if scale == 0.0:
        return 1.0
    a, b = a / scale, b / scale
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _same_float(x, y, rel):
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == y or math.isclose(x, y, rel_tol=rel, abs_tol=1e-300)


def _agree(r: OutputComparison, want: dict, *, exact_sums: bool):
    for k in ("passed", "worst_index", "nan_count"):
        assert getattr(r, k) == want[k], (k, getattr(r, k), want[k])
    for k in ("max_abs", "max_rel", "needed_atol", "needed_rtol"):  # maxima: exactly the one-shot value
        assert _same_float(getattr(r, k), want[k], 0.0), (k, getattr(r, k), want[k])
    for k in ("mean_abs", "cosine"):  # sums: equal in one chunk, float64 rounding apart across chunks
        assert _same_float(getattr(r, k), want[k], 0.0 if exact_sums else 1e-12), (k, getattr(r, k), want[k])
    nan_out, nan_ref, differ = want["counts"]
    if want["nan_count"]:
        assert f"({nan_out} in output, {nan_ref} in reference)" in r.message
    elif r.exact and not r.passed:
        assert r.message.startswith(f"{differ} of {r.shape and int(np.prod(r.shape)) or 1} elements differ")


def _random_pair(rng, shape, dtype, *, nans, infs, zeros, noise):
    ref = rng.standard_normal(shape).astype(dtype)
    out = (ref + rng.standard_normal(shape) * noise).astype(dtype)
    size = int(np.prod(shape))
    for arr, n in ((out, nans), (ref, nans)):
        arr.reshape(-1)[rng.choice(size, n, replace=False)] = np.nan
    for arr in (out, ref):
        idx = rng.choice(size, infs, replace=False)
        arr.reshape(-1)[idx] = rng.choice([np.inf, -np.inf], infs)
    ref.reshape(-1)[rng.choice(size, zeros, replace=False)] = 0.0
    out.reshape(-1)[rng.choice(size, zeros, replace=False)] = 0.0
    both = rng.choice(size, zeros, replace=False)
    ref.reshape(-1)[both] = 0.0
    out.reshape(-1)[both] = 0.0
    return out, ref


CASES = [  # (shape, dtype, nans, infs, zeros, noise)
    ((7, 13, 11), np.float32, 0, 0, 20, 1e-4),
    ((7, 13, 11), np.float32, 3, 0, 20, 1e-4),
    ((1001,), np.float32, 0, 4, 50, 1e-2),
    ((1001,), np.float16, 2, 3, 50, 1e-2),
    ((33, 31), np.float64, 0, 2, 10, 1e-7),
    ((5, 200), np.float32, 0, 0, 0, 0.0),  # identical arrays
]


@pytest.mark.parametrize("shape,dtype,nans,infs,zeros,noise", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_results_equal_the_one_shot_rules(shape, dtype, nans, infs, zeros, noise, seed):
    rng = np.random.default_rng(seed)
    out, ref = _random_pair(rng, shape, dtype, nans=nans, infs=infs, zeros=zeros, noise=noise)
    size = out.size
    for atol, rtol in ((1e-4, 1e-3), (0.0, 0.0), (10.0, 10.0)):
        want = _one_shot(out, ref, atol=atol, rtol=rtol)
        _agree(compare_arrays(out, ref, atol=atol, rtol=rtol, chunk=size), want, exact_sums=True)
        for chunk in (1, 7, 64, 1000):
            _agree(compare_arrays(out, ref, atol=atol, rtol=rtol, chunk=chunk), want, exact_sums=False)


def test_non_contiguous_and_0d_and_exact_inputs_chunk_alike():
    rng = np.random.default_rng(3)
    out, ref = _random_pair(rng, (40, 30), np.float32, nans=0, infs=1, zeros=10, noise=1e-3)
    out_t, ref_t = out.T, ref[::-1].T  # views in other orders: chunks are read in C order without a full copy
    assert not out_t.flags.c_contiguous and not ref_t.flags.c_contiguous
    _agree(compare_arrays(out_t, ref_t, chunk=17), _one_shot(out_t, ref_t), exact_sums=False)
    _agree(compare_arrays(np.float32(2.5), np.float32(2.0), chunk=1), _one_shot(np.float32(2.5), np.float32(2.0)),
           exact_sums=True)
    ints = rng.integers(0, 5, (9, 9))
    other = ints.copy()
    other[4, 4] += 1
    other[7, 1] -= 2
    for chunk in (1, 10, 81):
        r = compare_arrays(other, ints, chunk=chunk)
        _agree(r, _one_shot(other, ints), exact_sums=chunk == ints.size)
        assert r.worst_index == (7, 1) and r.message.startswith("2 of 81 elements differ")
    bools = rng.integers(0, 2, 50).astype(bool)
    flipped = bools.copy()
    flipped[[3, 30]] ^= True
    for chunk in (1, 8, 50):
        _agree(compare_arrays(flipped, bools, chunk=chunk), _one_shot(flipped, bools), exact_sums=chunk == bools.size)


def test_a_nan_in_a_later_chunk_is_found_first_in_c_order():
    ref = np.zeros(100, np.float32)
    out = ref.copy()
    out[[73, 91]] = np.nan
    out[5] = 1.0  # the largest error comes before the first NaN: the NaN is still the worst element
    r = compare_arrays(out, ref, chunk=10)
    assert not r and r.nan_count == 2 and r.worst_index == (73,)
    assert r.message == "2 NaN (2 in output, 0 in reference), first at [73]"


def test_comparing_large_outputs_needs_a_small_fraction_of_one_output():
    n = 50_000_000  # 200 MB per float32 array; a one-shot float64 comparison allocates several 400 MB arrays
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(n, dtype=np.float32)
    out = ref + np.float32(1e-5)
    out[12_345_678] += np.float32(0.5)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        r = compare_arrays(out, ref)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert not r and r.worst_index == (12_345_678,)
    assert r.max_abs == pytest.approx(0.5, rel=1e-4)
    assert r.mean_abs == pytest.approx(1e-5 + 0.5 / n, rel=0.05)
    assert r.cosine == pytest.approx(1.0, abs=1e-6)
    one_array = ref.nbytes
    assert peak < one_array / 10, f"peak extra memory {peak / 2**20:.1f} MiB for {one_array / 2**20:.0f} MiB arrays"
    assert peak < 40 * CHUNK * 8  # bounded by the chunk: about 20 float64 temporaries of one chunk at most


def test_resized_float_inputs_are_drawn_a_chunk_at_a_time_with_the_same_values():
    from shapetrace._verify.inputs import _mean_std, _normal

    shape = (3, CHUNK // 2 + 5)  # more than one chunk
    want = np.random.default_rng(7).normal(1.5, 0.25, shape).astype(np.float16)
    got = _normal(np.random.default_rng(7), 1.5, 0.25, shape, np.float16)
    assert got.dtype == np.float16 and np.array_equal(got, want)
    ex = np.random.default_rng(8).normal(3.0, 2.0, shape).astype(np.float32)
    ex[1, 7] = np.nan
    mean, std = _mean_std(ex)
    assert mean == pytest.approx(float(np.nanmean(ex.astype(np.float64))), rel=1e-12)
    assert std == pytest.approx(float(np.nanstd(ex.astype(np.float64))), rel=1e-12)
    tracemalloc.start()
    try:
        big = np.zeros(4 * CHUNK * 8, np.float32)  # 16 MiB
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        _mean_std(big)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < big.nbytes / 4  # a float64 copy would be twice its size
