"""shapetrace.constraints, the one reader of torch.export's guards: the sym_max normaliser, the safe evaluator, the
checks, the solver behind verify's resized inputs, and the pruning pass, which must be sound: checked on guard sets
copied from real exports of the offline examples and, exhaustively over bounded ranges, on random ones."""

from __future__ import annotations

import ast
import itertools
import random

import pytest

from shapetrace import constraints
from shapetrace.constraints import (Expr, alternative_sizes, check, checkable, compile_expr, evaluate, normalize,
                                    prune)
from shapetrace.manifest import Dim


def _dims(spec: dict) -> dict[str, Dim]:
    return {n: Dim(n, lo, hi, ex, ()) for n, (lo, hi, ex) in spec.items()}


# ========================================================= guard sets from real exports (torch 2.14, offline examples)
UNET_DIMS = _dims({
    "batch": (1, 63, 2), "height": (1, None, 8), "width": (1, None, 8), "sequence": (1, None, 77),
    "down_block_additional_residuals_2_height": (1, None, 4),
    "down_block_additional_residuals_2_width": (1, None, 4),
    "down_block_additional_residuals_3_height": (1, None, 4),
    "down_block_additional_residuals_3_width": (1, None, 4), "mid_block_additional_residual_height": (1, None, 4),
    "mid_block_additional_residual_width": (1, None, 4)
})
UNET = [
    '(height % 2) == 0',
    '(width % 2) == 0',
    '((32*width*height*batch) % (32*batch)) == 0',
    '(32*width*height*batch) == (32*batch*((width*height*batch) // batch))',
    '(1 + (((-1) + width) // 2)) != 1',
    '(1 + (((-1) + height) // 2)) != 1',
    '((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != (1 + (((-1) + height) // 2))',
    '((1 + (((-1) + height) // 2)) % ((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)))) != 0',
    '((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != 1',
    '(1 + (((-1) + width) // 2)) == down_block_additional_residuals_2_width',
    '(1 + (((-1) + height) // 2)) == down_block_additional_residuals_2_height',
    '(1 + (((-1) + width) // 2)*(((-1) + height) // 2) + (((-1) + width) // 2) + (((-1) + height) // 2)) != 1',
    '(1 + (((-1) + width) // 2)) == down_block_additional_residuals_3_width',
    '(1 + (((-1) + height) // 2)) == down_block_additional_residuals_3_height',
    '1 < (1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))',
    '(batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != batch',
    '(batch % (batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)))) != 0',
    '(1 + (((-1) + width) // 2)) == mid_block_additional_residual_width',
    '(1 + (((-1) + height) // 2)) == mid_block_additional_residual_height',
    'batch < 64',
    '128*batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)) <= 2147483648',
    'height == (2 + 2*(((-1) + height) // 2))',
    'width == (2 + 2*(((-1) + width) // 2))',
    '((4*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) % (2 + 2*(((-1) + height) // 2))) == 0',
]
CONTROLNET_DIMS = _dims({
    "batch": (1, None, 2), "height": (1, None, 8), "width": (1, None, 8), "sequence": (1, None, 77),
    "controlnet_cond_height": (1, None, 64), "controlnet_cond_width": (1, None, 64)
})
CONTROLNET = [
    '(1 + (((-1) + controlnet_cond_width) // 2)) != 1',
    '(1 + (((-1) + controlnet_cond_height) // 2)) != 1',
    '((1 + (((-1) + controlnet_cond_height) // 2))*(1 + (((-1) + controlnet_cond_width) // 2))) != 1',
    '(1 + (((-1) + controlnet_cond_width) // 4)) != 1',
    '(1 + (((-1) + controlnet_cond_height) // 4)) != 1',
    '((1 + (((-1) + controlnet_cond_height) // 4))*(1 + (((-1) + controlnet_cond_width) // 4))) != 1',
    '(1 + (((-1) + controlnet_cond_width) // 8)) != 1',
    '(1 + (((-1) + controlnet_cond_height) // 8)) != 1',
    '((1 + (((-1) + controlnet_cond_height) // 8))*(1 + (((-1) + controlnet_cond_width) // 8))) != 1',
    'width == (1 + (((-1) + controlnet_cond_width) // 8))',
    'height == (1 + (((-1) + controlnet_cond_height) // 8))',
    '((32*batch*width*height) % (32*batch)) == 0',
    '(32*batch*width*height) == (32*batch*((batch*width*height) // batch))',
    '(1 + (((-1) + width) // 2)) != 1',
    '(1 + (((-1) + height) // 2)) != 1',
    '((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != (1 + (((-1) + height) // 2))',
    '((1 + (((-1) + height) // 2)) % ((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)))) != 0',
    '((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != 1',
    '1 < (1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))',
    '(batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != batch',
    '(batch % (batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)))) != 0',
]
SDXL_UNET_DIMS = _dims({
    "batch": (1, 63, 2), "height": (1, None, 8), "width": (1, None, 8), "sequence": (1, None, 77),
    "added_cond_kwargs_time_ids_batch": (1, None, 2)
})
SDXL_UNET = [
    '(height % 2) == 0',
    '(width % 2) == 0',
    '((48*added_cond_kwargs_time_ids_batch) % batch) == 0',
    '(48*added_cond_kwargs_time_ids_batch) == (batch*((48*added_cond_kwargs_time_ids_batch) // batch))',
    'batch != (6*added_cond_kwargs_time_ids_batch)',
    '((6*added_cond_kwargs_time_ids_batch) % batch) == 0',
    '((48*added_cond_kwargs_time_ids_batch) // batch) != ((6*added_cond_kwargs_time_ids_batch) // batch)',
    '(((6*added_cond_kwargs_time_ids_batch) // batch) % ((48*added_cond_kwargs_time_ids_batch) // batch)) != 0',
    '((8*((6*added_cond_kwargs_time_ids_batch) // batch)) % ((48*added_cond_kwargs_time_ids_batch) // batch)) == 0',
    '(8*batch*((6*added_cond_kwargs_time_ids_batch) // batch)) != 0',
    '((6*added_cond_kwargs_time_ids_batch) // batch) != 1',
    '((6*added_cond_kwargs_time_ids_batch) // batch) != 0',
    '(8*((6*added_cond_kwargs_time_ids_batch) // batch)) == ((48*added_cond_kwargs_time_ids_batch) // batch)',
    '8*batch*((6*added_cond_kwargs_time_ids_batch) // batch) >= 2',
    '(32 + 8*((6*added_cond_kwargs_time_ids_batch) // batch)) == 80',
    '(1 + (((-1) + width) // 2)) != 1',
    '(1 + (((-1) + height) // 2)) != 1',
    '((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != (1 + (((-1) + height) // 2))',
    '((1 + (((-1) + height) // 2)) % ((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)))) != 0',
    '((1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != 1',
    '1 < (1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))',
    '(batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) != batch',
    '(batch % (batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)))) != 0',
    '((64*batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) % (64*batch)) == 0',
    '(64*batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)))'
    ' == (64*batch*((batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2))) // batch))',
    'batch < 64',
    '128*batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)) <= 2147483648',
    'height == (2 + 2*(((-1) + height) // 2))',
    'width == (2 + 2*(((-1) + width) // 2))',
]
VAE_DECODE_DIMS = _dims({"batch": (1, 63, 1), "height": (1, None, 8), "width": (1, None, 8)})
VAE_DECODE = [
    'batch < 64',
    '32*width*height*batch <= 2147483648',
    '128*width*height*batch <= 2147483648',
    '512*width*height*batch <= 2147483648',
]
VAE_ENCODE_DIMS = _dims({"batch": (1, None, 1), "height": (16, None, 64), "width": (16, None, 64)})
VAE_ENCODE = [
    '(width // 2) != 1',
    '(height // 2) != 1',
    '((width // 2)*(height // 2)) != (height // 2)',
    '((height // 2) % ((width // 2)*(height // 2))) != 0',
    '(max(1, width // 2)*max(1, height // 2)) != 1',
    '1 + (height // 2) >= 3',
    '1 + (width // 2) >= 3',
    '(width // 4) != 1',
    '(height // 4) != 1',
    '((width // 4)*(height // 4)) != (height // 4)',
    '((height // 4) % ((width // 4)*(height // 4))) != 0',
    '(max(1, width // 4)*max(1, height // 4)) != 1',
    '1 + (height // 4) >= 3',
    '1 + (width // 4) >= 3',
    '(width // 8) != 1',
    '(height // 8) != 1',
    '((width // 8)*(height // 8)) != (height // 8)',
    '((height // 8) % ((width // 8)*(height // 8))) != 0',
    '(max(1, width // 8)*max(1, height // 8)) != 1',
    '((width // 8)*(height // 8)) != 1',
    '1 < (width // 8)*(height // 8)',
    '(batch*(width // 8)*(height // 8)) != batch',
    '(batch % (batch*(width // 8)*(height // 8))) != 0',
    '(1 % ((width // 8)*(height // 8))) != 0',
    '(width // 8) < (width // 8)*(height // 8)',
    '(1 % (16*(width // 8))) != 0',
    '(width // 8) > 1',
    '(1 % (8*(width // 8))) != 0',
]
OPENPOSE_DIMS = _dims({"batch": (1, None, 1), "height": (8, None, 184), "width": (8, None, 136)})
OPENPOSE = [
    '(width // 2) != 1',
    '(height // 2) != 1',
    '(width // 4) >= 1 and (height // 4) >= 1',
    '(width // 4) != 1',
    '(height // 4) != 1',
    '(width // 8) >= 1 and (height // 8) >= 1',
    '(width // 8) != 1',
    '(height // 8) != 1',
]


REAL = {"unet": (UNET_DIMS, UNET), "controlnet": (CONTROLNET_DIMS, CONTROLNET),
        "sdxl_unet": (SDXL_UNET_DIMS, SDXL_UNET), "vae_decode": (VAE_DECODE_DIMS, VAE_DECODE),
        "vae_encode": (VAE_ENCODE_DIMS, VAE_ENCODE), "openpose": (OPENPOSE_DIMS, OPENPOSE)}

#: What prune keeps of each real set: the relations that matter, the guards torch added for sizes it traced at >= 2
#: (not implied by the manifest's min 1, so kept), and product bounds over unbounded dims (not implied either).
KEPT = {
    "unet": ("(height % 2) == 0", "(width % 2) == 0",
             "(1 + (((-1) + width) // 2)) != 1", "(1 + (((-1) + height) // 2)) != 1",
             "(1 + (((-1) + width) // 2)) == down_block_additional_residuals_2_width",
             "(1 + (((-1) + height) // 2)) == down_block_additional_residuals_2_height",
             "(1 + (((-1) + width) // 2)) == down_block_additional_residuals_3_width",
             "(1 + (((-1) + height) // 2)) == down_block_additional_residuals_3_height",
             "(1 + (((-1) + width) // 2)) == mid_block_additional_residual_width",
             "(1 + (((-1) + height) // 2)) == mid_block_additional_residual_height",
             "128*batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)) <= 2147483648"),
    "controlnet": ("width == (1 + (((-1) + controlnet_cond_width) // 8))",
                   "height == (1 + (((-1) + controlnet_cond_height) // 8))",
                   "(1 + (((-1) + width) // 2)) != 1", "(1 + (((-1) + height) // 2)) != 1"),
    "sdxl_unet": ("(height % 2) == 0", "(width % 2) == 0", "((6*added_cond_kwargs_time_ids_batch) % batch) == 0",
                  "(32 + 8*((6*added_cond_kwargs_time_ids_batch) // batch)) == 80",
                  "(1 + (((-1) + width) // 2)) != 1", "(1 + (((-1) + height) // 2)) != 1",
                  "128*batch*(1 + (((-1) + width) // 2))*(1 + (((-1) + height) // 2)) <= 2147483648"),
    "vae_decode": ("512*width*height*batch <= 2147483648",),
    "vae_encode": (),  # min 16 for height and width implies all 28
    "openpose": ("(width // 8) != 1", "(height // 8) != 1"),
}


# ======================================================================================== normaliser and evaluator
@pytest.mark.parametrize("text, expected", [
    ("torch.sym_max(1, width // 2) * torch.sym_min(height, 4)", "max(1, width // 2) * min(height, 4)"),
    ("sym_max(a, b) + sym_min(a, b)", "max(a, b) + min(a, b)"),
    ("Max(a, Min(b, 3))", "max(a, min(b, 3))"),
    ("max(a, b)", "max(a, b)"),
    ("xmax(a) + foo.sym_max(a, b) + Maximum(a)", "xmax(a) + foo.sym_max(a, b) + Maximum(a)"),  # not ours: untouched
])
def test_normalize_spells_every_sym_max_as_max(text, expected):
    assert normalize(text) == expected
    assert normalize(expected) == expected


def test_expr_is_normalised_and_names_its_dims_only():
    e = compile_expr("torch.sym_max(1, height // 2) == Min(width, batch)")
    assert isinstance(e, Expr) and e.text == "max(1, height // 2) == min(width, batch)"
    assert e.names == {"height", "width", "batch"}
    assert e({"height": 8, "width": 4, "batch": 7}) is True and e({"height": 8, "width": 5, "batch": 7}) is False
    assert e == compile_expr("max(1, height // 2) == min(width, batch)") and hash(e) == hash(compile_expr(e.text))
    with pytest.raises(AttributeError):
        e.text = "1"  # frozen


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "height.bit_length() > 2", "().__class__", "1.5 * height", "height / 2",
    "open('f')", "abs(height)", "max(a, b, key=f)", "max()", "max(*a)", "'a' == a", "[a for a in b]",
    "lambda: 1", "a if b else c", "~a", "a[0]", "a @ b", "height ==", "", "a; b", "f'{a}'", "1j * a",
    "math.pi", "math.ceil", "math.sqrt(a)", "os.ceil(a / 2)", "math.ceil(a / 2, b)", "math.ceil(a / 2) / 2",
    "height.real",
])
def test_the_evaluator_refuses_anything_but_integer_arithmetic(text):
    assert compile_expr(text) is None
    with pytest.raises(ValueError):
        evaluate(text, {"height": 8, "a": 1, "b": 2, "c": 3, "f": 0})


def test_evaluate_follows_python_on_integers():
    v = {"h": 8, "w": 6, "b": 0}
    assert evaluate("(1 + (((-1) + h) // 8))", v) == 1 and evaluate("(-1 + b) // 8", v) == -1  # floor, as Python
    assert evaluate("-7 % 3", v) == 2 and evaluate("7 % -3", v) == -2
    assert evaluate("2 ** 10 + h ** 2", v) == 1088 and evaluate("+h - -w", v) == 14
    assert evaluate("1 < w <= h < 9", v) is True and evaluate("1 < h <= w", v) is False
    assert evaluate("b == 0 or h // b == 1", v) is True  # short-circuit: the division is never evaluated
    assert evaluate("b != 0 and h // b == 1", v) is False
    assert evaluate("not h % 2 and max(h, w, 3) == 8 and min(h, w) == 6", v) is True
    assert evaluate("True + h", v) == 9
    with pytest.raises(ZeroDivisionError):
        evaluate("h // b", v)
    with pytest.raises(KeyError):
        evaluate("height + 1", v)
    for big in ("2 ** -1", "2 ** 65", "h ** (h * h * h)", "(2 ** 64) ** 64 ** 2", "(2 ** 64) ** 64 ** 1"):
        with pytest.raises(ValueError):
            evaluate(big, v)
    with pytest.raises(ValueError, match="not an integer"):
        evaluate("h + 1", {"h": 1.5})


def test_rounded_divisions_as_torch_prints_them_are_exact_integers():
    """``math.ceil(a / b)``: a padded chunk count (an audio encoder's 200-frame blocks); before, every such
    constraint counted as broken, so verify found no other sizes and the graph fell back to static."""
    v = {"s": 128, "t": 200, "b": 2}
    assert evaluate("math.ceil(s / 200)", v) == 1 and evaluate("math.ceil(t / 200)", v) == 1
    assert evaluate("math.floor(s / 200)", v) == 0 and evaluate("math.ceil((t + 1) / 200)", v) == 2
    assert evaluate("math.ceil((-s) / 200)", v) == 0  # towards +inf, as Python's math.ceil
    big = {"s": 10 ** 30 + 1}
    assert evaluate("math.ceil(s / 3)", big) == (10 ** 30 + 1 + 2) // 3  # exact: no float rounding
    assert compile_expr("(b*math.ceil(s / 200)) == b").names == frozenset({"b", "s"})
    assert check(["(b*math.ceil(s / 200)) == b"], v) == [] and check(["math.ceil(s / 200) == 2"], v)
    dims = {"s": Dim("s", 1, None, 128, ("x.1",)), "b": Dim("b", 1, None, 2, ("x.0",))}
    kept = prune(["(b*math.ceil(s / 200)) == b", "math.ceil(s / 200) >= 1", "math.floor(s / 200) >= 0"], dims)
    assert kept == ("(b*math.ceil(s / 200)) == b",)  # the prover reads them too: the tautologies go


# ================================================================================================= checks
def test_check_reports_ranges_first_then_the_broken_constraints():
    dims = _dims({"batch": (1, 63, 2), "height": (2, None, 8)})
    cs = ["height % 2 == 0", "sequence <= 77", "height // (batch - 64) <= 0", "batch < 64"]
    assert check(cs, {"batch": 64, "height": 9}, dims) == ["batch <= 63", "height % 2 == 0", "sequence <= 77",
                                                          "height // (batch - 64) <= 0", "batch < 64"]
    assert check(cs[:1], {"batch": 0, "height": 0}, dims) == ["batch >= 1", "height >= 2"]
    assert check([cs[0], cs[3]], {"batch": 2, "height": 8}, dims) == []
    assert check(["torch.sym_max(height, 2) == 8"], {"height": 8}) == []
    assert check(["x.size() > 1"], {"x": 2}) == ["x.size() > 1"]  # unreadable: broken, never evaluated
    as_json = {n: {"min": d.min, "max": d.max, "example": d.example} for n, d in dims.items()}  # manifest mapping
    assert check(cs, {"batch": 64, "height": 9}, as_json) == check(cs, {"batch": 64, "height": 9}, dims)


def test_checkable_sets_aside_what_it_cannot_read_and_normalises_the_rest():
    dims = _dims({"h": (1, None, 8), "z": (0, None, 0)})
    ok, skipped = checkable(["torch.sym_max(1, h // 2) >= 1", "h // z == 1", "missing > 1", "h.numel() > 1",
                             "1.5 < h", "Min(h, 4) == 4"], dims)
    assert ok == ["max(1, h // 2) >= 1", "h // z == 1", "missing > 1", "min(h, 4) == 4"]
    assert skipped == ["h.numel() > 1", "1.5 < h"]


# ================================================================================================= solver
def test_alternative_sizes_change_every_dim_and_respect_constraints():
    dims = _dims({"batch": (1, 63, 2), "height": (1, None, 8), "cond_height": (1, None, 64), "sequence": (1, 77, 77)})
    cs = ["height == (1 + (((-1) + cond_height) // 8))", "(height % 2) == 0", "batch < 64"]
    sizes = alternative_sizes(dims, cs)
    assert sizes == {"batch": 3, "height": 16, "cond_height": 128, "sequence": 76}  # verify's resized set, as before
    assert check(cs, sizes, dims) == []


def test_shifted_sizes_move_every_dim_together_so_offsets_the_model_keeps_still_hold():
    # a decoder step: the mask (8) is one longer than each layer's cache (7); the token dim is 1. The graph states
    # no tie between the two caches, so the solver moves them apart; shifted, every offset of the example holds
    dims = _dims({"batch": (1, None, 2), "mask": (3, None, 8), "past": (1, None, 7), "past_1": (1, None, 7),
                  "token": (1, None, 1)})
    cs = ["1 + past - mask <= 0"]
    shifted = constraints.shifted_sizes(dims, cs)
    assert shifted == {"batch": 3, "mask": 9, "past": 8, "past_1": 8, "token": 1}  # 1 stays: one new token
    assert shifted["mask"] - shifted["past"] == 8 - 7 and not check(cs, shifted, dims)
    capped = _dims({"batch": (1, 2, 2), "seq": (1, None, 5)})  # +1 leaves batch's range: every dim moves -1
    assert constraints.shifted_sizes(capped, []) == {"batch": 1, "seq": 4}
    assert constraints.shifted_sizes(_dims({"batch": (2, 2, 2)}), []) is None  # nothing can move
    assert constraints.shifted_sizes(_dims({"x": (1, None, 4), "y": (1, None, 4)}), ["x == 4"]) is None
    assert constraints.shifted_sizes(_dims({"token": (1, None, 1)}), []) is None  # only dims at 1: nothing to move


def test_alternative_sizes_keep_a_dim_that_cannot_change():
    assert alternative_sizes(_dims({"batch": (1, None, 1), "seq": (4, 4, 4)}), []) == {"batch": 2, "seq": 4}
    assert alternative_sizes(_dims({"seq": (4, 4, 4)}), ["seq == 4"]) is None
    assert alternative_sizes({}, []) is None
    # a relation that pins one dim to the other's example: the other still moves, the pinned one keeps its size
    assert alternative_sizes(_dims({"a": (1, None, 5), "b": (1, None, 7)}), ["a == 5 or b == 7"]) == {"a": 6, "b": 7}


@pytest.mark.parametrize("name", sorted(REAL))
def test_alternative_sizes_of_real_graphs_are_valid_and_move_every_dim(name):
    dims, cs = REAL[name]
    sizes = alternative_sizes(dims, cs)
    assert sizes is not None and set(sizes) == set(dims)
    assert check(cs, sizes, dims) == []
    assert all(sizes[n] != d.example for n, d in dims.items()), sizes
    assert alternative_sizes(dims, prune(cs, dims)) == sizes  # pruning does not change verify's resized inputs


def test_alternative_sizes_are_the_ones_verify_used_before():
    """Pinned from the previous verify.alternative_sizes on the same manifests."""
    assert alternative_sizes(UNET_DIMS, UNET) == {
        "batch": 3, "height": 10, "width": 10, "sequence": 78, "down_block_additional_residuals_2_height": 5,
        "down_block_additional_residuals_2_width": 5, "down_block_additional_residuals_3_height": 5,
        "down_block_additional_residuals_3_width": 5, "mid_block_additional_residual_height": 5,
        "mid_block_additional_residual_width": 5}
    assert alternative_sizes(CONTROLNET_DIMS, CONTROLNET) == {
        "batch": 3, "height": 9, "width": 9, "sequence": 78, "controlnet_cond_height": 65, "controlnet_cond_width": 65}
    assert alternative_sizes(SDXL_UNET_DIMS, SDXL_UNET) == {
        "batch": 3, "height": 10, "width": 10, "sequence": 78, "added_cond_kwargs_time_ids_batch": 3}
    assert alternative_sizes(OPENPOSE_DIMS, OPENPOSE) == {"batch": 2, "height": 185, "width": 137}


# ================================================================================================= prune
@pytest.mark.parametrize("name", sorted(REAL))
def test_prune_keeps_what_matters_of_real_guard_sets(name):
    dims, cs = REAL[name]
    kept = prune(cs, dims)
    assert kept == KEPT[name]
    assert kept == tuple(c for c in cs if c in kept)  # as given, in their order


def _fill(kept: tuple, values: dict) -> dict:
    """Dims tied by a kept ``name == expr`` computed from the others (the sampler's way to satisfy equalities)."""
    eqs = []
    for c in kept:
        node = ast.parse(c, mode="eval").body
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            eqs += [(a.id, ast.unparse(b)) for a, b in ((node.left, node.comparators[0]),
                                                          (node.comparators[0], node.left)) if isinstance(a, ast.Name)]
    for _ in range(len(eqs) + 1):
        for name, expr in eqs:
            if name not in values:
                try:
                    values[name] = evaluate(expr, values)
                except KeyError:
                    pass
    return values


@pytest.mark.parametrize("name", sorted(REAL))
def test_prune_is_sound_on_real_guard_sets(name):
    """Every sampled assignment within the ranges that satisfies the kept constraints satisfies all of them."""
    dims, cs = REAL[name]
    kept = prune(cs, dims)
    derived = {a for c in kept for a in compile_expr(c).names
               if any(c.startswith(f"{a} == ") or c.endswith(f" == {a}") for c in kept)}
    roots = [n for n in dims if n not in derived] or list(dims)
    rng, satisfied = random.Random(0), 0
    for _ in range(3000):
        pool = [rng.randint(max(dims[n].min, 0), dims[n].min + 70) for n in roots]
        values = _fill(kept, {n: rng.choice(pool) if rng.random() < 0.5 else pool[i] for i, n in enumerate(roots)})
        if set(values) == set(dims) and not check(kept, values, dims):
            satisfied += 1
            assert check(cs, values, dims) == [], values
    assert satisfied >= 100  # the check was not vacuous


def test_prune_drops_range_bounds_tautologies_and_duplicates():
    dims = _dims({"batch": (1, 63, 2), "seq": (1, 2147483648, 77), "h": (1, None, 8), "w": (16, None, 64)})
    cs = ["batch >= 1", "batch < 64", "seq <= 2147483648", "h <= 2147483648", "batch == batch", "h % 2 == 0",
          "(h % 2) == 0", "((32*h*w*batch) % (32*batch)) == 0", "(32*w*h*batch) == (32*batch*((w*h*batch) // batch))",
          "(w // 8) != 1", "torch.sym_max(1, w // 2)*Max(1, w // 4) != 1", "h == (2 + 2*(((-1) + h) // 2))"]
    # an unbounded h keeps its overflow guard; the rest is implied by the ranges, by itself, or by h % 2 == 0
    assert prune(cs, dims) == ("h <= 2147483648", "h % 2 == 0")


def test_prune_past_its_budget_keeps_the_guards_it_has_not_examined():
    dims = _dims({"batch": (1, 63, 2), "h": (1, None, 8)})
    cs = ["batch >= 1", "h % 2 == 0", "(h % 2) == 0", "batch < 64"]
    assert constraints.prune_within(cs, dims, None) == (("h % 2 == 0",), 0)
    kept, unexamined = constraints.prune_within(cs, dims, 0.0)  # no time at all: nothing is proved, all stay
    assert kept == ("batch >= 1", "h % 2 == 0", "batch < 64") and unexamined == 3  # the duplicate still goes


def test_prune_keeps_the_stronger_of_two_related_guards():
    dims = _dims({"h": (1, None, 8), "w": (1, None, 8), "b": (1, None, 1)})
    assert prune(["h % 2 == 0", "h % 4 == 0"], dims) == ("h % 4 == 0",)
    assert prune(["h % 4 == 0", "h % 2 == 0"], dims) == ("h % 4 == 0",)
    assert prune(["h % 2 == 0", "h % 3 == 0"], dims) == ("h % 2 == 0", "h % 3 == 0")  # neither implies the other
    bounds = ["32*w*h*b <= 2147483648", "128*w*h*b <= 2147483648", "512*w*h*b <= 2147483648"]
    assert prune(bounds, dims) == ("512*w*h*b <= 2147483648",)
    assert prune(["h != 1", "h != 2"], dims) == ("h != 1", "h != 2")  # h >= 3 needs both


def test_prune_keeps_the_8x_relation_and_drops_its_family():
    dims = _dims({"height": (1, None, 8), "cond": (1, None, 64)})
    family = ["(1 + (((-1) + cond) // 2)) != 1", "(1 + (((-1) + cond) // 4)) != 1", "(1 + (((-1) + cond) // 8)) != 1",
              "height == (1 + (((-1) + cond) // 8))", "(1 + (((-1) + height) // 2)) != 1"]
    assert prune(family, dims) == ("height == (1 + (((-1) + cond) // 8))", "(1 + (((-1) + height) // 2)) != 1")


def test_prune_keeps_guards_from_tracing_at_two_unless_the_range_says_so():
    """torch.export traces dynamic dims at >= 2 and emits `batch != 1`; the manifest reports min 1 for such dims.
    Not implied by min 1, so kept; a caller that passes min 2 sees them go."""
    cs = ["batch != 1", "s >= 2", "(1 + (((-1) + w) // 2)) != 1", "(1 + (((-1) + w) // 2)) == r"]
    at_one = _dims({"batch": (1, None, 2), "s": (1, None, 4), "w": (1, None, 8), "r": (1, None, 4)})
    at_two = _dims({"batch": (2, None, 2), "s": (2, None, 4), "w": (2, None, 8), "r": (2, None, 4)})
    assert prune(cs, at_one) == tuple(cs)
    assert prune(cs, at_two) == ("(1 + (((-1) + w) // 2)) == r",)


def test_prune_keeps_what_it_cannot_read_or_could_raise():
    dims = _dims({"a": (0, None, 4), "b": (0, 5, 2), "c": (1, 5, 2)})
    cs = ["a.size(0) > 1", "a >= 0", "unknown_dim >= 0", "a // b >= 0", "a // c >= 0", "1.5 < a"]
    assert prune(cs, dims) == ("a.size(0) > 1", "unknown_dim >= 0", "a // b >= 0", "1.5 < a")  # b may be 0


def test_prune_uses_equalities_between_dims():
    dims = _dims({"t": (1, None, 2), "b": (1, None, 2)})
    cs = ["((48*t) % b) == 0", "b != (6*t)", "((6*t) % b) == 0", "(32 + 8*((6*t) // b)) == 80", "((6*t) // b) != 1"]
    # the last two pin 6*t == 6*b, so t == b: the rest follows
    assert prune(cs, dims) == ("((6*t) % b) == 0", "(32 + 8*((6*t) // b)) == 80")


def test_prune_follows_python_floor_and_modulo_of_negative_values():
    dims = _dims({"a": (0, 40, 4)})
    assert prune(["(-a) // 2 == -(a // 2)"], dims) == ("(-a) // 2 == -(a // 2)",)  # false for odd a
    assert prune(["a % 2 == 0", "(-a) // 2 == -(a // 2)"], dims) == ("a % 2 == 0",)
    assert prune(["((a - 3) % (a + 10)) == a - 3"], dims) == ("((a - 3) % (a + 10)) == a - 3",)  # a < 3 breaks it
    assert prune(["((a - 3) % (a + 10)) == a - 3"], _dims({"a": (3, None, 4)})) == ()
    assert prune(["((a - 3) // (a + 10)) == 0", "(a - 3) % -4 <= 0"], dims) == ("((a - 3) // (a + 10)) == 0",)


# ----------------------------------------------------------------------------------- random sets, exhaustively
def _down(rng: random.Random, x: str) -> str:
    c = rng.choice([2, 4, 8])
    return rng.choice([f"(1 + (((-1) + {x}) // {c}))", f"({x} // {c})", f"(2 + 2*(((-1) + {x}) // 2))",
                       f"torch.sym_max(1, {x} // {c})"])


def _guard(rng: random.Random, names: list[str]) -> str:
    x, y, k = rng.choice(names), rng.choice(names), rng.choice([2, 3, 4, 8])
    return rng.choice([
        f"({x} % {k}) == 0", f"{_down(rng, x)} != 1", f"({_down(rng, x)}*{_down(rng, y)}) != 1",
        f"1 < {_down(rng, x)}*{_down(rng, y)}", f"({_down(rng, x)}*{_down(rng, y)}) != {_down(rng, y)}",
        f"({_down(rng, y)} % ({_down(rng, x)}*{_down(rng, y)})) != 0", f"({x}*{_down(rng, y)}) != {x}",
        f"{y} == {_down(rng, x)}", f"{x} == {_down(rng, x)}", f"({k}*{x}*{y}) % ({k}*{x}) == 0",
        f"{k * 16}*{x}*{_down(rng, y)} <= {rng.choice([200, 400, 1000])}", f"{x} < {rng.randint(3, 40)}",
        f"{x} != {rng.randint(0, 3)}", f"{x} >= {rng.randint(0, 3)}", f"(({k}*{x}) % {y}) == 0",
        f"(({k}*{x}) // {y}) == {rng.randint(1, 6)}", f"{x} != ({k}*{y})", f"not ({x} - {y} > {k}) or {x} % 2 == 1",
        f"max({x}, {y}) - min({x}, {y}) <= {k}", f"({x} + {y}) // ({y} + 1) >= 1",
        f"(({x} - {k}) % ({y} + {k})) == {x} - {k}", f"(({y} - {x}) // {k}) * {k} != {y} - {x}",
    ])


@pytest.mark.parametrize("seed", range(40))
def test_prune_is_sound_on_random_guard_sets_over_bounded_ranges(seed):
    """Bounded ranges make soundness checkable exactly: every assignment in the box is tried."""
    rng = random.Random(seed)
    names = ["a", "b", "c"][:rng.randint(1, 3)]
    span = {1: 70, 2: 40, 3: 14}[len(names)]
    dims = {x: Dim(x, lo, lo + rng.randint(0, span), lo, ()) for x in names for lo in [rng.choice([0, 1, 1, 2, 8])]}
    anchor = {x: rng.randint(d.min, d.max) for x, d in dims.items()}
    cs = []
    for _ in range(rng.randint(2, 12)):
        g = next((g for g in (_guard(rng, names) for _ in range(40)) if _holds(g, anchor)), None)
        cs += [g] if g else []
    kept = prune(cs, dims)
    assert kept == tuple(c for c in dict.fromkeys(cs) if c in kept)
    for vals in itertools.product(*(range(d.min, d.max + 1) for d in dims.values())):
        values = dict(zip(names, vals))
        if not check(kept, values):
            assert check(cs, values) == [], (cs, kept, values)


def _holds(text: str, values: dict) -> bool:
    try:
        return bool(evaluate(text, values))
    except (ArithmeticError, ValueError):
        return False


def test_prune_drops_most_of_the_unet_noise():
    dims, cs = REAL["unet"]
    assert len(cs) == 24 and len(prune(cs, dims)) == 11
    assert constraints.__all__ == ["normalize", "Expr", "compile_expr", "evaluate", "check", "checkable",
                                   "alternative_sizes", "shifted_sizes", "prune", "prune_within"]
