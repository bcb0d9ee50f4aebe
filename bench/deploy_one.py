"""ONE deployment measurement in a fresh process (run by the ``deploy`` section, ``bench/suite/deploy.py``): the
time from this process's start to its first image, and its peak RSS.

    python bench/deploy_one.py --variant load_pipeline --suite full --folder DIR [--cache-dir DIR] \
        --result result.json [--image image.npy]

Variants (``--workload controlnet``: the bench's SD 1.5 + OpenPose ControlNet pipeline, ``zoo.run_pipeline``;
``--workload sd15``: plain SD 1.5 saved with ``save_pretrained``, ``optimum_infer``'s workload):

``eager``           controlnet: build the pipeline with random weights (``zoo``); sd15: ``from_pretrained(DIR)``; run
``load``            controlnet: build it, then ``shapetrace.load(pipe, DIR)``; run
``load_pipeline``   ``shapetrace.load_pipeline(DIR[, cache_dir=])``: no PyTorch weights; run
``optimum``         sd15, optimum-intel's venv: ``OVStableDiffusionPipeline.from_pretrained(DIR, ov_config=...)``
                    (f32, as shapetrace's default; ``CACHE_DIR`` when ``--cache-dir``); run
``export``          sd15, not timed here: record one run of the workload, ``export_all(formats=("openvino",))``
``optimum-export``  sd15, optimum's venv, not timed here: ``OVStableDiffusionPipeline.from_pretrained(DIR,
                    export=True)`` + ``save_pretrained(--out)``

Time zero is the process's own start (``/proc/self/stat`` starttime, on the boot clock), so the interpreter's start
and every import count; marks are taken at the imports' end, when the pipeline is ready, and at the first image.
Peak RSS is the kernel's high-water mark (VmHWM) read right after the first image. Only the standard library is
imported before time zero's first mark: the optimum venv has no shapetrace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def since_start() -> float:
    """Seconds since this process started (``starttime`` of /proc/self/stat, boot clock, 10 ms ticks)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5); [19] after "pid (comm)"
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start


def status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of /proc/self/status, bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    return out


def _pipeline(a: argparse.Namespace) -> tuple[object, object, object]:
    """(the object to run, its runtime or None, the function that runs the workload once)."""
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_grad_enabled(False)
    if a.workload == "controlnet":
        import zoo

        def run(p: object) -> object:
            return zoo.run_pipeline(p, a.suite, a.seed)
    else:
        from optimum_infer import _run as run  # prompt, seed 0, 256x256, 4 DDIM steps, guidance 7.5
    if a.variant == "optimum":
        from optimum.intel import OVStableDiffusionPipeline

        config = {"INFERENCE_PRECISION_HINT": "f32", **({"CACHE_DIR": a.cache_dir} if a.cache_dir else {})}
        pipe = OVStableDiffusionPipeline.from_pretrained(a.folder, ov_config=config)
        pipe.set_progress_bar_config(disable=True)
        return pipe, None, run
    import shapetrace

    if a.variant == "load_pipeline":
        pipe = shapetrace.load_pipeline(a.folder, backend="openvino", **(
            {"cache_dir": a.cache_dir} if a.cache_dir else {}))
        return pipe, shapetrace.runtime_of(pipe), run
    if a.workload == "controlnet":
        import zoo

        pipe = zoo.build_pipeline(a.suite, a.seed)
    else:
        from optimum_infer import _load_torch

        pipe = _load_torch(a.folder)
    runtime = shapetrace.load(pipe, a.folder, backend="openvino") if a.variant == "load" else None
    return pipe, runtime, run


def measure(a: argparse.Namespace) -> dict:
    marks = {"script": since_start()}
    pipe, runtime, run = _pipeline(a)
    marks["ready"] = since_start()
    image = run(pipe)
    marks["first_image"] = since_start()
    res: dict = {"variant": a.variant, "workload": a.workload, "seconds_to_first_image": marks["first_image"],
                 "marks": marks, **{k.lower(): v for k, v in status().items()}, "loadavg": os.getloadavg()}
    if runtime is not None:
        res["ran_on"] = {s.graph: s.ran_on for s in runtime.stats()}
        runtime.close()
    if a.image:
        import numpy as np

        np.save(a.image, np.asarray(image, dtype=np.float32))
    return res


def export_sd15(a: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    import torch
    from optimum_infer import _load_torch, _run

    torch.set_grad_enabled(False)
    t = time.perf_counter()
    if a.variant == "optimum-export":
        from optimum.intel import OVStableDiffusionPipeline

        OVStableDiffusionPipeline.from_pretrained(a.folder, export=True, compile=False).save_pretrained(a.out)
        return {"seconds": round(time.perf_counter() - t, 1), "vmhwm": status()["VmHWM"]}
    import shapetrace

    # a str, not a Path: the pipeline keeps it in its config (_name_or_path), and a skeleton cannot describe a Path
    # (the config is then left out of the skeleton and the rebuilt pipeline fails on its first call)
    pipe = _load_torch(a.folder)
    with shapetrace.record(pipe) as rec:
        _run(pipe)
    result = shapetrace.export_all(pipe, a.out, recording=rec, formats=("openvino",), verify=False, progress=False,
                                   overwrite=True)
    return {"seconds": round(time.perf_counter() - t, 1), "vmhwm": status()["VmHWM"], "ok": result.ok,
            "skeleton": "error" not in (result.manifest.skeleton or {"error": "none"})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", required=True,
                    choices=("eager", "load", "load_pipeline", "optimum", "export", "optimum-export"))
    ap.add_argument("--workload", choices=("controlnet", "sd15"), default="controlnet")
    ap.add_argument("--suite", default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folder", required=True, help="the export folder (sd15 eager / export: the saved pipeline)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None, help="export / optimum-export: where the export goes")
    ap.add_argument("--image", default=None, help="save the first image here (.npy)")
    ap.add_argument("--result", required=True)
    a = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    res = export_sd15(a) if a.variant in ("export", "optimum-export") else measure(a)
    Path(a.result).write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "ran_on"}, default=str), flush=True)


if __name__ == "__main__":
    main()
