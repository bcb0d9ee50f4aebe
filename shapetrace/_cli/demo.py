"""``python -m shapetrace demo``: the seed scenario end to end, offline, in a few minutes on a laptop CPU.

1. an ``OpenposeDetector`` (the real CMU body network with random weights, :func:`shapetrace.testing.openpose_detector`,
   or ``--openpose DIR`` with the annotator checkpoints) extracts a pose map from the built-in picture
   (:func:`shapetrace.testing.pose_image`, or ``--image FILE``) -> ``input.png``, ``pose.png`` (blank with random
   weights: they find no keypoints; the pipeline runs on it all the same);
2. a ``StableDiffusionControlNetPipeline`` (tiny, random weights, or ``--model DIR`` / ``--controlnet DIR``: local
   diffusers folders with real weights) runs once inside :func:`shapetrace.record` -> the signature table;
3. :func:`shapetrace.export_all` writes ONNX + OpenVINO IR for every graph and verifies them -> the parity table;
4. the same call (same seed) runs in PyTorch -> ``torch.png``, then on the exported graphs through
   :func:`shapetrace.load` -> ``openvino.png``; their PSNR and max abs difference are printed;
5. per-stage timings, and ``summary.json`` with every number printed.

Exit status 0 when the export, the parity checks and the final image (PSNR >= :data:`PSNR_BOUND` dB) all pass,
1 otherwise, 2 for unusable arguments (checked before any work). ``add_demo_command(subparsers)`` plugs the command into the ``shapetrace`` CLI; ``python -m
shapetrace._cli.demo`` runs it standalone. :func:`demo_unavailable` says, without importing anything, whether the packages
the demo needs are installed (a CLI offers the command only when it returns None).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .._flow.export_all import export_all
from .._verify.images import max_abs_diff, psnr
from .._record.proxy import record
from .._serve.runtime import load

__all__ = ["add_demo_command", "demo_unavailable", "run_demo", "main", "PSNR_BOUND"]

#: The final image on the exported graphs must be at least this close to PyTorch's (dB). f32 OpenVINO measures
#: ~120 dB on the tiny pipeline (max abs difference ~1e-5 on a 0..1 image); 40 dB is invisible to the eye.
PSNR_BOUND = 40.0

_DESCRIPTION = ("The seed scenario end to end, offline: an OpenposeDetector takes a pose from a picture, a "
                "StableDiffusionControlNetPipeline is recorded, exported to ONNX + OpenVINO IR, verified, and run "
                "again on the exported graphs; writes pose.png, torch.png, openvino.png, the export and "
                "summary.json into --out.")


#: What the demo imports beyond shapetrace's own dependencies, each with the extra that installs it.
_DEPENDENCIES = (("diffusers", "diffusers"), ("transformers", "diffusers"), ("controlnet_aux", "diffusers"),
                 ("PIL", "diffusers"), ("onnx", "onnx"), ("onnxscript", "onnx"), ("onnxruntime", "onnx"),
                 ("openvino", "openvino"))


def demo_unavailable() -> str | None:
    """Why the demo cannot run here, in one line naming the extra(s) to install; None when it can.

    It only looks the packages up (``importlib.util.find_spec``): nothing is imported, so a CLI can ask at start-up
    for free. A package that is installed but broken still fails when the demo runs, with the extra in the message.
    """
    missing = [(name, extra) for name, extra in _DEPENDENCIES if not _installed(name)]
    if not missing:
        return None
    extras = ",".join(dict.fromkeys(extra for _, extra in missing))
    return (f"the demo needs {', '.join(name for name, _ in missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'shapetrace[{extras}]'")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a __spec__: imported already
        return True


class _Clock:
    """Per-stage wall times, printed as they finish and kept for the summary."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        print(f"\n== {name}: {what}", flush=True)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - t0, 2)
            print(f"   ({name}: {self.stages[name]:.1f}s)", flush=True)

    def table(self) -> str:
        width = max(len(n) for n in self.stages)
        lines = [f"  {n.ljust(width)}  {s:7.1f}s" for n, s in self.stages.items()]
        lines.append(f"  {'total'.ljust(width)}  {sum(self.stages.values()):7.1f}s")
        return "\n".join(lines)


def add_demo_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to a CLI's subparsers (``set_defaults(func=run_demo)``)."""
    p = subparsers.add_parser(
        "demo", help="record, export, verify and run a ControlNet + OpenPose pipeline on OpenVINO (offline)",
        description=_DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=run_demo)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="a local diffusers StableDiffusionControlNetPipeline (or StableDiffusionPipeline with "
                        "--controlnet) folder with real weights; default: a tiny pipeline with random weights")
    p.add_argument("--controlnet", metavar="DIR", default=None, help="a local diffusers ControlNetModel folder")
    p.add_argument("--openpose", metavar="DIR", default=None,
                   help="a local folder with the OpenPose annotator checkpoints (body_pose_model.pth, "
                        "hand_pose_model.pth, facenet.pth); default: the real networks with random weights")
    p.add_argument("--image", metavar="FILE", default=None, help="the picture to take the pose from (default: a "
                                                                   "built-in drawing of a standing figure)")
    p.add_argument("--prompt", default=None, help="default: 'chef in the kitchen'")
    p.add_argument("--size", type=int, default=None, help="height and width in pixels (default: 64, 512 with --model)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: 3, 20 with --model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("openvino", "onnxruntime"), default="openvino")
    p.add_argument("--device", default="CPU", help="runtime device (default: CPU)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the per-graph parity checks (faster)")


def _check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with ``args`` (before any work is done), or None."""
    if args.controlnet and not args.model:
        return "--controlnet needs --model (the built-in pipeline has its own ControlNet)"
    for flag, path in (("--model", args.model), ("--controlnet", args.controlnet), ("--openpose", args.openpose)):
        if path and not Path(path).is_dir():
            return f"{flag} {path}: no such folder (pass a local folder; the demo never downloads)"
    if args.image and not Path(args.image).is_file():
        return f"--image {args.image}: no such file"
    if args.size is not None and (args.size < 8 or args.size % 8):
        return f"--size {args.size}: use a multiple of 8 (the VAE downsamples by 8)"
    if args.steps is not None and args.steps < 1:
        return f"--steps {args.steps}: use at least 1"
    return None


def _pipeline(args: argparse.Namespace) -> Any:
    if not args.model:
        from ..testing import controlnet_pipeline

        return controlnet_pipeline()
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    kwargs: dict[str, Any] = {"local_files_only": True, "safety_checker": None, "requires_safety_checker": False}
    if args.controlnet:
        kwargs["controlnet"] = ControlNetModel.from_pretrained(args.controlnet, local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(args.model, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _save(images: Any, path: Path) -> None:
    from PIL import Image
    import numpy as np

    arr = np.asarray(images[0] if isinstance(images, (list, tuple)) or getattr(images, "ndim", 3) == 4 else images)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo with parsed ``args`` (see :func:`add_demo_command`); returns the exit status.

    Long by design: the demo's stages in the order a reader follows them (build, record, export, verify, load,
    images, summary), each a few lines under its own clock stage; split, the story would be spread over helpers."""
    import warnings

    import numpy as np
    from PIL import Image

    from ..testing import DEFAULT_PROMPT, openpose_detector, pose_image, run_openpose

    problem = _check_arguments(args)
    if problem:
        print(f"shapetrace demo: error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export_dir = out / "export"
    real = bool(args.model)
    size = args.size or (512 if real else 64)
    steps = args.steps or (20 if real else 3)
    prompt = args.prompt or DEFAULT_PROMPT
    clock = _Clock()
    print(f"shapetrace demo -> {out}/  ({'weights from ' + args.model if real else 'tiny pipeline, random weights'}; "
          f"{size}x{size}, {steps} steps, seed {args.seed}, {args.backend}:{args.device})")

    def call(pipe: Any) -> Any:
        import torch

        return pipe(prompt, control, height=size, width=size, num_inference_steps=steps, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(args.seed)).images

    with clock.stage("pose", "OpenposeDetector on the " + ("given picture" if args.image else "built-in picture")
                     + ("" if args.openpose else " (real body network, random weights)")):
        if args.openpose:
            from controlnet_aux import OpenposeDetector

            detector = OpenposeDetector.from_pretrained(args.openpose)
        else:
            detector = openpose_detector()
        picture = Image.open(args.image).convert("RGB") if args.image else pose_image()
        picture.save(out / "input.png")
        pose = np.asarray(run_openpose(detector, picture), dtype=np.uint8)
        control = Image.fromarray(pose)
        control.save(out / "pose.png")
        found = "a blank map: random weights find no keypoints" if not pose.any() else "keypoints drawn"
        print(f"   pose map {control.size[0]}x{control.size[1]} ({found}) -> {out / 'pose.png'}")
    with clock.stage("build", "StableDiffusionControlNetPipeline"):
        pipe = _pipeline(args)
    with clock.stage("record", "one run inside shapetrace.record()"):
        with record(pipe) as rec:
            call(pipe)
    print(str(rec))
    with clock.stage("export", f"export_all -> {export_dir} (ONNX + OpenVINO IR)"
                     + (", verify on ONNX Runtime and OpenVINO" if args.verify else "")):
        result = export_all(pipe, export_dir, overwrite=True, verify=args.verify, progress=False)
    print(str(result))
    if result.parity is not None:
        print()
        print(str(result.parity))
    with clock.stage("torch", "the same call in PyTorch"):
        torch_images = call(pipe)
    _save(torch_images, out / "torch.png")
    with clock.stage("load", f"shapetrace.load(pipe, backend={args.backend!r}): compile every graph"):
        runtime = load(pipe, export_dir, backend=args.backend, device=args.device,
                                  strict=False)
    with runtime, warnings.catch_warnings():
        warnings.simplefilter("always")
        with clock.stage(args.backend, f"the same call on the exported graphs ({args.backend})"):
            ov_images = call(pipe)
    name = "openvino.png" if args.backend == "openvino" else f"{args.backend}.png"
    _save(ov_images, out / name)
    print(runtime.summary())
    db, diff = psnr(ov_images, torch_images), max_abs_diff(ov_images, torch_images)
    image_ok = db >= PSNR_BOUND
    print(f"\nfinal image, {args.backend} vs torch: PSNR {db:.1f} dB, max abs difference {diff:.2e} "
          f"(on 0..1; bound PSNR >= {PSNR_BOUND:g} dB: {'ok' if image_ok else 'FAILED'})")
    print("\ntimings:")
    print(clock.table())
    summary = {"out": str(out), "size": size, "steps": steps, "seed": args.seed, "backend": args.backend,
               "device": args.device, "export_ok": all(result.graphs.values()),
               "parity_ok": None if result.parity is None else bool(result.parity),
               "psnr_db": db, "max_abs_diff": diff, "psnr_bound_db": PSNR_BOUND, "image_ok": image_ok,
               "served": dict(runtime.served), "timings_s": clock.stages,
               "files": ["input.png", "pose.png", "torch.png", name, "export/manifest.json"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nwrote {', '.join(str(out / f) for f in ('input.png', 'pose.png', 'torch.png', name))}, "
          f"{export_dir}/, {out / 'summary.json'}")
    ok = result.ok and image_ok
    print("demo ok" if ok else "demo FAILED")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shapetrace._cli.demo [--out DIR] ...``"""
    p = argparse.ArgumentParser(prog="python -m shapetrace._cli.demo", description=_DESCRIPTION)
    _add_arguments(p)
    return run_demo(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
