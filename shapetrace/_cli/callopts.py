"""The options that build a pipeline call, shared by ``export`` (the recorded call) and ``run`` (the deployed
call): prompt, image, size, steps, new tokens, ``--call-json``, seed; and their checks (exit 2 on a bad one)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import SourceError

__all__ = ["add_call_arguments", "call_json", "check_sizes"]


def add_call_arguments(call: Any, task_help: str) -> None:
    """Add the call options to ``call`` (a parser or argument group)."""
    call.add_argument("--task", default=None, help=task_help)
    call.add_argument("--prompt", default=None, help="the prompt / text (default: 'chef in the kitchen')")
    call.add_argument("--image", metavar="FILE", default=None, help="input / control image (default: a built-in "
                      "drawing of a standing figure)")
    call.add_argument("--height", type=int, default=None, help="image height (default: the model's sample size)")
    call.add_argument("--width", type=int, default=None, help="image width (default: the model's sample size)")
    call.add_argument("--steps", type=int, default=None, help="denoising steps (default: 2)")
    call.add_argument("--max-new-tokens", type=int, default=None, help="for generation tasks (default: 2)")
    call.add_argument("--call-json", metavar="JSON", default=None,
                      help="more keyword arguments for the call, as a JSON object: '{\"guidance_scale\": 5.0}'")
    call.add_argument("--seed", type=int, default=0, help="generator seed of the call (default: 0)")


def call_json(args: argparse.Namespace) -> dict[str, Any]:
    """``--call-json`` as a dict (SourceError when it is not a JSON object)."""
    try:
        value = json.loads(args.call_json) if args.call_json else {}
    except ValueError as e:
        raise SourceError(f"--call-json is not valid JSON ({e}): pass an object like '{{\"guidance_scale\": 5}}'") \
            from e
    if not isinstance(value, dict):
        raise SourceError(f"--call-json must be a JSON object of keyword arguments, not {type(value).__name__}")
    return value


def check_sizes(args: argparse.Namespace) -> None:
    """``--height`` / ``--width`` / ``--steps`` / ``--max-new-tokens`` are positive (SourceError otherwise)."""
    for flag in ("height", "width", "steps", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SourceError(f"--{flag.replace('_', '-')} {value}: use a positive number")
