"""Quantize exported OpenVINO IRs with NNCF, calibrated on the calls the pipeline really made.

``export_all(obj, out, quantize="int8")`` (or a ``{graph: mode or None}`` dict) runs, per graph, after its float IR
was written:

1. **The calls.** The graph's recorded calibration samples (``record(obj, samples=N)``; without ``samples=``, the
   first call only), those whose shapes the export cannot take (a static dim) left out. They are split in two
   disjoint sets: **held-out** calls (a ``held_out`` fraction, at least one, spread evenly over the calls) measure
   the quality, the others calibrate. With a single call there is nothing to hold out: it calibrates *and*
   measures, and the manifest says so (``held_out.note``). A data-free mode (``int8-weights``) calibrates on
   nothing: every call measures.
2. **The mode** (:data:`MODES`), NNCF on the ``ov.Model``:

   - ``int8``: ``nncf.quantize`` -- int8 weights and activations, calibrated on the calibration calls
     (``model_type=TRANSFORMER`` when the graph has a Softmax, i.e. attention: NNCF then keeps the attention
     arithmetic it should not quantize in float), with NNCF's overflow fix on every layer: weights take 7 bits, so
     the IR keeps its quality on CPUs without VNNI, whose int8 kernels saturate a 16-bit intermediate on full
     8-bit weights (:mod:`shapetrace._core.isa`; an IR calibrated on a VNNI machine is deployed on AVX2 ones too).
   - ``hybrid``: optimum-intel's scheme for diffusion models (``_hybrid_quantization``): the weights of MatMul and
     embedding (Gather) ops compressed to int8 (data-free, ``nncf.compress_weights``, Convolutions left out), then
     ``nncf.quantize`` of everything else -- the convolutions' weights *and* activations -- with those MatMul /
     Gather ops in the ignored scope, ``model_type=TRANSFORMER``, SmoothQuant off, the overflow fix as for int8.
   - ``int8-weights``: ``nncf.compress_weights`` INT8_ASYM per channel, data-free (activations stay float).
   - ``int4-weights``: ``nncf.compress_weights`` INT4_ASYM, group size 64 (adjusted where a channel count does not
     divide), ratio 0.8: data-aware -- the calibration calls' activations choose which 20 % of the weights stay
     int8.
3. **The quality**: the float IR and the quantized IR run every held-out call (OpenVINO, f32 inference hint), and
   each float output's SNR (dB) and cosine against the float IR are pooled over the calls
   (:mod:`shapetrace._verify.quality`). ``min_snr_db`` (default 20 dB) is the bound written into the manifest, which
   ``verify`` then holds the graph to instead of float tolerances; with ``keep_float_below=True`` a graph below
   it keeps its float IR (the manifest says by how much it missed).

The quantized IR replaces the float one under the same name (``files.openvino``; ``load`` serves it as any IR).
The ONNX file stays float: NNCF's calibration here works on the OpenVINO model, and a QDQ ONNX would need a second,
separate calibration (``nncf.quantize`` on the ONNX model) that could not be proven to match; ``onnxruntime``
runs and verifies the float graph. The manifest's ``quantization`` per graph: ``mode``, ``nncf`` (version),
``parameters``, ``calibration`` (``samples``, ``calls``), ``held_out`` (``calls``, ``note``), ``skipped_calls``,
``quality`` (per output ``snr_db``, ``cosine``, ``max_abs``, ``calls``), ``min_snr_db``, ``passed``,
``kept_float``, ``calibration_isa`` (:meth:`shapetrace._core.isa.CpuIsa.to_json` of the machine that calibrated and
measured it: ``name``, ``vnni``, ``cpu``, ``cap``), ``float_ir_bytes``, ``ir_bytes``, ``seconds`` and
``peak_rss_bytes`` of the calibration.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .._core import diskspace
from .._core.optional import require
from ..backends.openvino_backend import OpenVINORunner
from ..errors import ExportError
from .._core.memory import PeakRSS
from .._core.isa import cpu_isa
from ..manifest import GraphEntry
from .._verify.quality import DEFAULT_MIN_SNR_DB, QualityMeter
from .._record.recording import GraphRecord, Recording
from .._record.samples import arrays_of

__all__ = ["MODES", "OVERFLOW_FIXES", "QuantizeOptions", "RecordedCall", "plan_modes", "quantize_entries",
           "quantize_graph", "recorded_calls", "split", "weighted_matmuls"]

MODES = ("int8", "hybrid", "int8-weights", "int4-weights")
#: Modes that use no calibration data: every recorded call is held out to measure the quality.
DATA_FREE = ("int8-weights",)
#: NNCF's ``OverflowFix`` values (``QuantizeOptions.overflow_fix``).
OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")


@dataclass(frozen=True)
class QuantizeOptions:
    """``held_out``: the fraction of recorded calls kept aside to measure quality (at least one when there are
    two or more); ``max_calibration``: at most this many calls calibrate (default: all the others);
    ``min_snr_db``: the bound written into the manifest for verify; ``keep_float_below``: keep the float IR of a
    graph whose held-out SNR is below ``min_snr_db``; ``overflow_fix``: NNCF's overflow fix for ``int8`` /
    ``hybrid`` (``"enable"``, the default: 7-bit weights everywhere, exact on CPUs with and without VNNI;
    ``"first_layer_only"`` / ``"disable"``: full 8-bit weights, only for IRs that will run on VNNI CPUs alone)."""

    held_out: float = 0.25
    max_calibration: int | None = None
    min_snr_db: float = DEFAULT_MIN_SNR_DB
    keep_float_below: bool = False
    overflow_fix: str = "enable"

    def __post_init__(self) -> None:
        if not 0.0 < self.held_out < 1.0:
            raise ExportError(f"QuantizeOptions(held_out={self.held_out!r}): a fraction between 0 and 1")
        if self.max_calibration is not None and self.max_calibration < 1:
            raise ExportError(f"QuantizeOptions(max_calibration={self.max_calibration!r}): at least 1, or None")
        if self.overflow_fix not in OVERFLOW_FIXES:
            raise ExportError(f"QuantizeOptions(overflow_fix={self.overflow_fix!r}): one of "
                              f"{', '.join(map(repr, OVERFLOW_FIXES))} ('enable' keeps int8 exact without VNNI)")


def plan_modes(quantize: Any, names: Sequence[str], formats: Sequence[str]) -> dict[str, str | None]:
    """``{graph: mode or None}`` for ``names`` from ``export_all``'s ``quantize=`` (checked before any work)."""
    if quantize is None:
        return {n: None for n in names}
    if isinstance(quantize, str):
        chosen: dict[str, Any] = {n: quantize for n in names}
    elif isinstance(quantize, Mapping):
        unknown = [g for g in quantize if g not in names]
        if unknown:
            raise ExportError(f"quantize={dict(quantize)!r} names graph(s) {unknown!r} this export does not hold; "
                              f"graphs: {', '.join(names)}")
        chosen = {n: quantize.get(n) for n in names}
    else:
        raise ExportError(f"quantize={quantize!r}: pass a mode ({', '.join(MODES)}) or {{graph: mode or None}}")
    bad = sorted({m for m in chosen.values() if m is not None and m not in MODES}, key=str)
    if bad:
        raise ExportError(f"quantize mode {bad[0]!r} is not known; choose from {', '.join(MODES)} (None: float)")
    if any(chosen.values()) and "openvino" not in formats:
        raise ExportError("quantize= quantizes the OpenVINO IR: keep 'openvino' in formats")
    if any(chosen.values()):
        require("nncf", "quantize", "export_all(quantize=...)")  # before any work
    return chosen


# ============================================================================================ the calls
@dataclass(frozen=True)
class RecordedCall:
    """One recorded call of a graph that can calibrate or measure: its index and how to read its inputs."""

    call: int
    arrays: Callable[[], dict[str, np.ndarray]]


def recorded_calls(rec: Recording, g: GraphRecord) -> tuple[RecordedCall, ...]:
    """The graph's calibration samples, or its first call when the recording kept none."""
    store = rec.samples
    kept = store.samples(g.name) if store is not None else ()
    if kept:
        return tuple(RecordedCall(s.call, s.arrays) for s in kept)
    first = arrays_of(g.examples)
    return (RecordedCall(0, lambda: first),)


def _fits(entry: GraphEntry, arrays: Mapping[str, np.ndarray]) -> bool:
    for spec in entry.inputs:
        a = arrays.get(spec.name)
        if a is None or a.ndim != len(spec.shape):
            return False
        if any(isinstance(d, int) and d != s for d, s in zip(spec.shape, a.shape)):
            return False
    return True


def split(n: int, held_out: float) -> tuple[list[int], list[int]]:
    """Positions (0..n-1) that calibrate and that are held out: ``max(1, round(n * held_out))`` held out, spread
    evenly; with one call, it is both."""
    if n <= 1:
        return list(range(n)), list(range(n))
    h = min(n - 1, max(1, round(n * held_out)))
    held = sorted({min(n - 1, int((i + 0.5) * n / h)) for i in range(h)})
    return [i for i in range(n) if i not in held], held


class _Feeds:
    """An iterable NNCF reads as often as it needs: each call's inputs read from disk when reached, cast to the
    model's input types (nothing kept in memory between calls)."""

    def __init__(self, calls: Sequence[RecordedCall], types: Mapping[str, Any]) -> None:
        self.calls, self.types = list(calls), dict(types)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for c in self.calls:
            arrays = c.arrays()
            yield {n: np.asarray(arrays[n], dtype=t, order="C") for n, t in self.types.items()}

    def __len__(self) -> int:
        return len(self.calls)


# ============================================================================================ NNCF
def _const_below(op: Any, port: int) -> Any:
    """The Constant feeding ``op``'s input ``port`` through Convert / FakeQuantize / Reshape, or None (as
    optimum-intel's ``_get_operation_const_op``)."""
    queue = deque([op.input_value(port).get_node()])
    while queue:
        node = queue.popleft()
        if node.get_type_name() == "Constant":
            return node
        if not node.inputs():
            return None
        if node.get_type_name() in ("Convert", "FakeQuantize", "Reshape"):
            queue.append(node.input_value(0).get_node())
    return None


def weighted_matmuls(model: Any) -> list[str]:
    """Names of the MatMul ops with a constant operand and of the embedding Gathers (float constant table)."""
    names = []
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "MatMul" and (_const_below(op, 0) is not None or _const_below(op, 1) is not None):
            names.append(op.get_friendly_name())
        elif kind == "Gather" and op.input_value(0).get_element_type().get_type_name() in ("f16", "f32", "f64") \
                and _const_below(op, 0) is not None:
            names.append(op.get_friendly_name())
    return names


def _nncf_apply(model: Any, mode: str, dataset: Any, n_calib: int, options: QuantizeOptions) -> tuple[Any, dict]:
    nncf = require("nncf", "quantize", "export_all(quantize=...)")
    has_attention = any(op.get_type_name() == "Softmax" for op in model.get_ops())
    transformer = nncf.ModelType.TRANSFORMER
    overflow_fix = nncf.OverflowFix(options.overflow_fix)
    if mode == "int8":
        model_type = transformer if has_attention else None
        q = nncf.quantize(model, dataset, subset_size=n_calib, model_type=model_type,
                          advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=overflow_fix))
        return q, {"function": "nncf.quantize", "subset_size": n_calib,
                   "model_type": model_type.value if model_type else None, "preset": "default",
                   "fast_bias_correction": True, "overflow_fix": overflow_fix.value}
    if mode == "hybrid":
        names = weighted_matmuls(model)
        types = ["Convolution"] if any(op.get_type_name() == "Convolution" for op in model.get_ops()) else []
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                      ignored_scope=nncf.IgnoredScope(types=types))
        q = nncf.quantize(model, dataset, subset_size=n_calib, model_type=transformer,
                          ignored_scope=nncf.IgnoredScope(names=names, validate=False),
                          advanced_parameters=nncf.AdvancedQuantizationParameters(
                              overflow_fix=overflow_fix,
                              smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)))
        return q, {"function": "nncf.compress_weights + nncf.quantize", "weights": "int8_asym (MatMul, Gather)",
                   "weights_ignored_types": types, "activations_ignored_ops": len(names), "subset_size": n_calib,
                   "model_type": "transformer", "smooth_quant_alpha": -1, "scheme": "optimum-intel hybrid",
                   "overflow_fix": overflow_fix.value}
    if mode == "int8-weights":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM), {
            "function": "nncf.compress_weights", "mode": "int8_asym", "data": "data-free"}
    adv = nncf.AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST)
    q = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=64, ratio=0.8,
                              dataset=dataset, subset_size=n_calib, advanced_parameters=adv)
    return q, {"function": "nncf.compress_weights", "mode": "int4_asym", "group_size": 64,
               "group_size_fallback_mode": "adjust", "ratio": 0.8, "backup_mode": "int8_asym",
               "data": "data-aware (mixed precision chosen by the calibration calls)", "subset_size": n_calib}


def _ir_bytes(xml: Path) -> int:
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def quantize_graph(stage: Path, entry: GraphEntry, calls: Sequence[RecordedCall], mode: str,
                   options: QuantizeOptions) -> GraphEntry:
    """Quantize one graph's IR in ``stage`` in place; returns its entry with ``quantization`` (and sizes) set."""
    ov = require("openvino", "openvino")
    nncf = require("nncf", "quantize", "export_all(quantize=...)")
    xml = stage / str(entry.file("openvino"))
    usable = [c for c in calls if _fits(entry, c.arrays())]
    skipped = [c.call for c in calls if c not in usable]
    if not usable:
        raise ExportError(f"graph {entry.name!r}: none of its recorded calls {[c.call for c in calls]} fits the "
                          f"export's static dims; record calls of the exported sizes, or export with dynamic dims")
    if mode in DATA_FREE:  # nothing calibrates: every call measures
        calib, held = [], list(usable)
    else:
        calib_pos, held_pos = split(len(usable), options.held_out)
        calib = [usable[i] for i in calib_pos][:options.max_calibration]
        held = [usable[i] for i in held_pos]
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        model = ov.Core().read_model(str(xml))
        types = {n: np.dtype(p.get_element_type().to_dtype()) for p in model.inputs for n in entry.input_names
                 if n in p.get_names()}
        q, params = _nncf_apply(model, mode, nncf.Dataset(_Feeds(calib, types)), len(calib), options)
        out_xml = xml.with_name(f"{xml.stem}.quantized.xml")
        ov.save_model(q, str(out_xml), compress_to_fp16=False)
        del q, model
    seconds = round(time.perf_counter() - t0, 3)
    quality = _measure(xml, out_xml, entry, held)
    worst = min((q.snr_db for q in quality.values()), default=float("inf"))
    passed = worst >= options.min_snr_db
    keep_float = options.keep_float_below and not passed
    float_bytes, q_bytes = _ir_bytes(xml), _ir_bytes(out_xml)
    if keep_float:
        for f in (out_xml, out_xml.with_suffix(".bin")):
            f.unlink()
    else:
        os.replace(out_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(out_xml, xml)
    note = None
    if len(usable) == 1 and mode not in DATA_FREE:
        note = (f"only one call of {entry.name!r} was recorded: it calibrated and measured the quality (the figures "
                f"are optimistic); record more calls with record(obj, samples=N)")
    record = {
        "mode": mode, "nncf": metadata.version("nncf"), "parameters": params,
        "calibration": {"samples": len(calib), "calls": [c.call for c in calib]},
        "held_out": {"calls": [c.call for c in held], "note": note}, "skipped_calls": skipped,
        "quality": {n: q.to_json() for n, q in quality.items()},
        "min_snr_db": options.min_snr_db, "worst_snr_db": worst if np.isfinite(worst) else repr(float(worst)),
        "passed": passed, "kept_float": keep_float, "calibration_isa": cpu_isa().to_json(),
        "float_ir_bytes": float_bytes,
        "ir_bytes": float_bytes if keep_float else q_bytes, "seconds": seconds, "peak_rss_bytes": rss.peak}
    sizes = dict(entry.sizes)
    sizes["openvino"] = record["ir_bytes"]
    return dataclasses.replace(entry, quantization=MappingProxyType(record), sizes=MappingProxyType(sizes))


def _measure(float_xml: Path, q_xml: Path, entry: GraphEntry, held: Sequence[RecordedCall]) -> dict:
    """Per output SNR / cosine of the quantized IR vs the float IR on the held-out calls (f32 inference hint)."""
    meter = QualityMeter()
    ref_runner = OpenVINORunner(float_xml, entry.input_names, entry.output_names, label=f"float:{entry.name}")
    q_runner = OpenVINORunner(q_xml, entry.input_names, entry.output_names, label=f"quantized:{entry.name}")
    with ref_runner, q_runner:
        for c in held:
            feed = c.arrays()
            meter.add(q_runner.infer(feed), ref_runner.infer(feed))
    return meter.result()


def quantize_entries(stage: Path, entries: Sequence[GraphEntry], rec: Recording, modes: Mapping[str, str | None],
                     options: QuantizeOptions | None, log: Callable[[str], None] | None = None) -> list[GraphEntry]:
    """:func:`quantize_graph` for every exported graph with a mode; a graph whose quantization fails keeps its
    float IR and carries the reason (``quantization.error``), the others go on."""
    options = options or QuantizeOptions()
    out = []
    for e in entries:
        mode = modes.get(e.name)
        if mode is None or not e.ok or not e.file("openvino"):
            out.append(e)
            continue
        try:
            new = quantize_graph(stage, e, recorded_calls(rec, rec.graphs[e.name]), mode, options)
        except (ImportError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:  # this graph stays float and says why; the export goes on (not on a full disk)
            diskspace.raise_if_full(err, stage, f"quantizing graph {e.name!r}")
            for f in stage.glob(f"{Path(str(e.file('openvino'))).stem}.quantized.*"):
                f.unlink()
            new = dataclasses.replace(e, quantization=MappingProxyType(
                {"mode": mode, "error": f"{type(err).__name__}: {str(err)[:500]}", "kept_float": True}))
        if log is not None:
            q = new.quantization or {}
            log(f"  {e.name}: {mode}, " + (f"error: {q['error'][:120]}" if q.get("error") else
                                           f"worst SNR {float(q['worst_snr_db']):.1f} dB on held-out calls "
                                           f"{q['held_out']['calls']}, {q['seconds']:.1f}s"))
        out.append(new)
    return out

