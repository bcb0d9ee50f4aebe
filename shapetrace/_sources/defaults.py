"""The defaults the command line records a folder with when the user gives none: :data:`DEFAULT_PROMPT` and
:func:`pose_image`, a picture drawn in code (no file needed) for a pipeline that takes a control image.

:mod:`shapetrace.testing` hands the same two on: its examples run with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.optional import require

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

__all__ = ["DEFAULT_PROMPT", "pose_image"]

#: The prompt every example runs with unless told otherwise.
DEFAULT_PROMPT = "chef in the kitchen"


def pose_image(width: int = 192, height: int = 256) -> Image.Image:
    """A deterministic RGB picture of a stick figure standing in a room; no files needed.

    The default is portrait, 192 wide and 256 high (numpy shape ``(256, 192, 3)``):
    the "256x192 image" that :func:`shapetrace.testing.run_openpose` turns into a
    ``(1, 3, 184, 136)`` body-network input.
    """
    Image, ImageDraw = require("PIL.Image", "diffusers"), require("PIL.ImageDraw", "diffusers")

    img = Image.new("RGB", (width, height), (214, 226, 238))
    draw = ImageDraw.Draw(img)

    def p(x: float, y: float) -> tuple[int, int]:
        return round(x * (width - 1)), round(y * (height - 1))

    draw.rectangle([p(0.0, 0.78), p(1.0, 1.0)], fill=(150, 118, 86))  # floor
    draw.rectangle([p(0.08, 0.12), p(0.34, 0.40)], fill=(250, 250, 235), outline=(90, 90, 90))  # window
    lw = max(2, round(min(width, height) / 28))
    skin, shirt, trousers = (236, 188, 150), (200, 40, 40), (40, 50, 110)
    neck, hip = p(0.5, 0.30), p(0.5, 0.56)
    draw.line([neck, hip], fill=shirt, width=lw + 2)  # torso
    draw.line([neck, p(0.33, 0.40), p(0.28, 0.52)], fill=shirt, width=lw, joint="curve")  # right arm
    draw.line([neck, p(0.67, 0.38), p(0.76, 0.28)], fill=shirt, width=lw, joint="curve")  # left arm, raised
    draw.line([hip, p(0.40, 0.70), p(0.38, 0.86)], fill=trousers, width=lw, joint="curve")  # right leg
    draw.line([hip, p(0.60, 0.70), p(0.63, 0.86)], fill=trousers, width=lw, joint="curve")  # left leg
    head_r = 0.075 * min(width, height * 0.75)
    cx, cy = p(0.5, 0.21)
    draw.ellipse([cx - head_r, cy - head_r, cx + head_r, cy + head_r], fill=skin, outline=(60, 40, 30))
    for hx, hy in (p(0.28, 0.52), p(0.76, 0.28)):  # hands
        draw.ellipse([hx - lw, hy - lw, hx + lw, hy + lw], fill=skin)
    return img
