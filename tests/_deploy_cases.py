"""The objects the deployment tests export in one process and rebuild with ``load_pipeline`` in another
(tests/test_deploy.py, tests/_deploy_child.py). Importable by name from both, so the skeleton can name its classes.

Each case: ``build() -> obj`` (seeded: both processes could build the same one) and ``run(obj) -> output`` (the
same call everywhere); :func:`comparable` turns an output into arrays / text to compare across the processes.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


class PoseToImage:
    """The seed scenario: an OpenPose detector next to a ControlNet pipeline, the pose map of one feeding the other."""

    def __init__(self, detector: Any, pipe: Any) -> None:
        self.detector = detector
        self.pipe = pipe

    def __call__(self, prompt: str) -> Any:
        from shapetrace.testing import pose_image, run_openpose
        from shapetrace.testing.examples import EXAMPLES

        pose = run_openpose(self.detector, pose_image(), output_type="pil")
        return EXAMPLES["controlnet"].run(self.pipe, image=pose, prompt=prompt)


class Holder:
    """A plain object holding a module the recorded run calls, and one it never calls (its weights are saved)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
        self.spare = torch.nn.Linear(8, 3).eval()
        self.scale = 0.5


def _pose_to_image() -> PoseToImage:
    from shapetrace.testing import controlnet_pipeline, openpose_detector

    detector = openpose_detector()
    detector.hand_estimation = detector.face_estimation = None  # only the body network runs (include_hand=False)
    return PoseToImage(detector, controlnet_pipeline())


def _example(name: str) -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    from shapetrace.testing import EXAMPLES

    return EXAMPLES[name].build, lambda obj: EXAMPLES[name].run(obj)


def _text_generation() -> Any:
    import transformers

    from shapetrace.testing import tiny_bert_tokenizer

    torch.manual_seed(0)
    tok = tiny_bert_tokenizer()
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                     initializer_range=0.5, bos_token_id=tok.cls_token_id, eos_token_id=None,
                                     pad_token_id=tok.pad_token_id)
    return transformers.pipeline("text-generation", model=transformers.GPT2LMHeadModel(config).eval(), tokenizer=tok)


def _speech() -> Any:
    from shapetrace.testing import speech_recognition_pipeline

    return speech_recognition_pipeline()


_AUDIO = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1

#: name -> (build, the recorded run, the run compared across processes, export_all keyword arguments)
CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], Any], Callable[[Any], Any], dict]] = {
    "pose_to_image": (_pose_to_image, lambda o: o("chef in the kitchen"), lambda o: o("a dancer on a street"), {}),
    "img2img": (*_example("img2img"), _example("img2img")[1], {}),
    "sdxl": (*_example("sdxl"), _example("sdxl")[1], {}),
    # another prompt length and more tokens than recorded
    "text_generation": (_text_generation, lambda o: o("a b c", max_new_tokens=5, do_sample=False),
                        lambda o: o("a b c d e f g", max_new_tokens=9, do_sample=False), {"stateful": True}),
    "speech": (_speech, lambda o: o(_AUDIO, generate_kwargs=dict(max_new_tokens=5)),
               lambda o: o(_AUDIO[:12000], generate_kwargs=dict(max_new_tokens=9)), {"stateful": True}),
    "holder": (Holder, lambda o: o.net(torch.ones(2, 8)),
               lambda o: (o.net(torch.linspace(-1, 1, 24).reshape(3, 8)), o.spare(torch.ones(1, 8)) * o.scale), {}),
}


def comparable(output: Any) -> dict[str, Any]:
    """``{"images": array}`` / ``{"text": ...}`` / ``{"tensors": [arrays]}`` for one output."""
    from shapetrace._report.e2e import images_of

    if type(output) in (list, dict):  # a transformers pipeline's answer (a ModelOutput is a dict subclass)
        return {"text": output}
    if isinstance(output, tuple) or isinstance(output, torch.Tensor):
        items = output if isinstance(output, tuple) else (output,)
        return {"tensors": [t.detach().numpy() for t in items]}
    return {"images": np.stack(images_of(output))}
