"""OpenPose offline: :func:`openpose_detector` (the real ``controlnet_aux`` networks, random weights),
:func:`run_openpose` (one run with the settings the tests rely on) and :func:`pose_image` (the built-in picture).

With the defaults, the body network sees :data:`OPENPOSE_INPUT_SHAPE` (see :func:`run_openpose` for why).
controlnet_aux and PIL are imported inside the functions (:func:`~shapetrace.testing._support.require`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from .._sources import defaults
from ._support import require, seeded

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from controlnet_aux import OpenposeDetector
    from PIL import Image

__all__ = [
    "OPENPOSE_DETECT_RESOLUTION",
    "OPENPOSE_IMAGE_RESOLUTION",
    "OPENPOSE_INPUT_SHAPE",
    "openpose_detector",
    "pose_image",
    "run_openpose",
]

#: ``detect_resolution`` :func:`run_openpose` passes (the OpenposeDetector default).
OPENPOSE_DETECT_RESOLUTION = 512
#: ``image_resolution`` :func:`run_openpose` passes (the OpenposeDetector default).
OPENPOSE_IMAGE_RESOLUTION = 512
#: What ``body_estimation.model`` receives when :func:`run_openpose` runs on :func:`pose_image`.
OPENPOSE_INPUT_SHAPE = (1, 3, 184, 136)


def _open_pose() -> ModuleType:
    """``controlnet_aux.open_pose`` with the package's import-time noise (timm, mediapipe) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return require("controlnet_aux.open_pose")


def _random_estimator(estimator_cls: Any, model: torch.nn.Module, *, strip_prefix: bool) -> Any:
    """Save ``model``'s random weights to a temporary ``.pth`` and load them the way controlnet_aux does.

    ``Body`` and ``Hand`` read their checkpoint through ``util.transfer``, which
    looks up every state-dict key with its first dotted part removed
    (``model0.conv1_1.weight`` -> ``conv1_1.weight``, the layout of the original
    CMU checkpoints); ``Face`` loads the state dict as it is.
    """
    state = model.state_dict()
    if strip_prefix:
        state = {key.split(".", 1)[1]: value for key, value in state.items()}
    with tempfile.TemporaryDirectory(prefix="shapetrace-openpose-") as tmp:
        path = os.path.join(tmp, "model.pth")
        torch.save(state, path)
        return estimator_cls(path)


def openpose_detector(seed: int = 0) -> OpenposeDetector:
    """A ``controlnet_aux.OpenposeDetector`` with the real networks and random weights.

    Like ``OpenposeDetector.from_pretrained`` it holds three estimators, whose
    torch modules are ``body_estimation.model`` (``bodypose_model``, ~52M
    parameters), ``hand_estimation.model`` (``handpose_model``) and
    ``face_estimation.model`` (``FaceNet``).  Each is seeded, saved to a
    temporary checkpoint and loaded back through ``Body`` / ``Hand`` /
    ``Face``, exactly the code path of a downloaded checkpoint.  Only the body
    network runs unless ``include_hand`` / ``include_face`` are passed.
    """
    open_pose = _open_pose()
    faces = require("controlnet_aux.open_pose.face")
    networks = require("controlnet_aux.open_pose.model")

    with seeded(seed):
        body = _random_estimator(open_pose.Body, networks.bodypose_model(), strip_prefix=True)
        hand = _random_estimator(open_pose.Hand, networks.handpose_model(), strip_prefix=True)
        face = _random_estimator(open_pose.Face, faces.FaceNet(), strip_prefix=False)
    return open_pose.OpenposeDetector(body, hand, face)


def run_openpose(det: OpenposeDetector, image: Image.Image | np.ndarray | None = None, **overrides: Any) -> Any:
    """Run ``det`` once with the settings the tests rely on; returns the pose map (a uint8 HxWx3 array).

    Defaults: ``image=pose_image()`` (192 wide, 256 high), ``detect_resolution=512``,
    ``image_resolution=512``, ``include_body=True``, ``include_hand=False``,
    ``include_face=False``, ``output_type="np"``; ``overrides`` replace them.

    Why ``body_estimation.model`` then sees ``(1, 3, 184, 136)``: the detector
    first resizes the image so its short side is ``detect_resolution`` and
    rounds both sides to multiples of 64, 192x256 (WxH) -> 512x704.  ``Body``
    then scales it by ``0.5 * 368 / H`` = 184/704 -> 133x184 and pads right and
    bottom to a multiple of the stride 8 -> 136x184, i.e. NCHW (1, 3, 184, 136).
    A landscape 256x192 image can never give that shape (its width stays the
    longer side: it gives (1, 3, 184, 256)).
    """
    kwargs: dict[str, Any] = dict(
        detect_resolution=OPENPOSE_DETECT_RESOLUTION,
        image_resolution=OPENPOSE_IMAGE_RESOLUTION,
        include_body=True,
        include_hand=False,
        include_face=False,
        output_type="np",
    )
    kwargs.update(overrides)
    return det(pose_image() if image is None else image, **kwargs)


def pose_image(width: int = 192, height: int = 256) -> "Image.Image":
    """The built-in picture (:func:`shapetrace._sources.defaults.pose_image`): a deterministic RGB stick figure
    standing in a room, portrait 192 wide and 256 high by default (numpy shape ``(256, 192, 3)``), the "256x192
    image" that :func:`run_openpose` turns into a ``(1, 3, 184, 136)`` body-network input; no files needed."""
    require("PIL.Image")
    return defaults.pose_image(width, height)
