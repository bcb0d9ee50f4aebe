"""A transparent stand-in for a module (wrapt ``ObjectProxy`` style): the base of the recording proxy and of the
runtime stand-in.

A :class:`StandIn` stands where a module was (``pipe.unet``) and forwards everything to it: attribute reads and
writes, ``.config``, ``.dtype``, ``.to()`` (which returns the stand-in, not the module), container access
(``ModuleList``), equality and hashing, and ``__class__`` (so ``isinstance(standin, UNet2DConditionModel)`` holds).
Everything it owns lives under the ``_st_`` prefix. Copy, deepcopy and pickle are refused with a message.

There is one dispatch hook: calls of ``forward`` (through ``__call__``) and of the module's own public methods
(:func:`shapetrace._core.signature.is_recordable`: ``vae.decode``, not ``.to()``) go to :meth:`StandIn._st_call`, which
a subclass implements (record the call; run it on a runtime). Every other method runs on the module, through
:meth:`StandIn._st_run_forwarded` (the recorder watches what ``generate`` calls inside it).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch

from ..errors import ShapetraceError
from .signature import is_recordable

__all__ = ["StandIn", "wrapped_of"]


def _get(self: Any, name: str) -> Any:
    return object.__getattribute__(self, name)


def wrapped_of(standin: "StandIn") -> torch.nn.Module:
    """The module behind a stand-in."""
    return object.__getattribute__(standin, "_st_wrapped")


class StandIn:
    """Base class; subclasses set ``_st_kind``, implement ``_st_call`` / ``_st_describe`` / ``_st_refusal``."""

    __slots__ = ("_st_wrapped", "_st_path", "__weakref__")
    _st_kind = "standin"

    def __init__(self, wrapped: torch.nn.Module, path: str) -> None:
        object.__setattr__(self, "_st_wrapped", wrapped)
        object.__setattr__(self, "_st_path", path)

    # ---- the hooks a subclass implements ---------------------------------------------------------------
    def _st_call(self, method: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """Run ``fn(*args, **kwargs)``, the module's ``method``, the subclass's way."""
        raise NotImplementedError

    def _st_run_forwarded(self, method: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """Run a forwarded method (``generate``, ``to``); a subclass may watch what it does."""
        return fn(*args, **kwargs)

    def _st_describe(self) -> str:
        """The end of ``repr()``: ``3 calls``, ``forward on openvino:CPU``."""
        return ""

    def _st_refusal(self, verb: str) -> ShapetraceError:
        """The error for a refused ``copy`` / ``deepcopy`` / ``pickle``."""
        return ShapetraceError(f"cannot {verb} {self!r}")

    # ---- identity ------------------------------------------------------------------------------------
    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(standin, UNet2DConditionModel) holds
        return type(_get(self, "_st_wrapped"))

    @property
    def __wrapped__(self) -> torch.nn.Module:
        return _get(self, "_st_wrapped")

    def __repr__(self) -> str:
        kind = type(self).__name__  # type() sees the real class; __class__ is the module's
        return (f"<{kind} {_get(self, '_st_path')!r} for {type(_get(self, '_st_wrapped')).__name__}, "
                f"{_get(self, '_st_describe')()}>")

    def __copy__(self) -> Any:
        raise _get(self, "_st_refusal")("copy")

    def __deepcopy__(self, memo: Any) -> Any:
        raise _get(self, "_st_refusal")("deepcopy")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise _get(self, "_st_refusal")("pickle")

    # ---- calls ---------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        wrapped = _get(self, "_st_wrapped")
        return _get(self, "_st_call")("forward", wrapped, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        wrapped = _get(self, "_st_wrapped")
        value = getattr(wrapped, name)
        if not callable(value) or getattr(value, "__self__", None) is not wrapped:
            return value
        if name == "forward" or is_recordable(type(wrapped), name):
            dispatch = _get(self, "_st_call")

            def dispatched(*args: Any, **kwargs: Any) -> Any:
                return dispatch(name, value, args, kwargs)

            dispatched.__name__ = name
            dispatched.__wrapped__ = value  # type: ignore[attr-defined]
            return dispatched

        run_forwarded = _get(self, "_st_run_forwarded")

        def forwarded(*args: Any, **kwargs: Any) -> Any:  # .to() / .eval() return the stand-in, not the module
            result = run_forwarded(name, value, args, kwargs)
            return self if result is wrapped else result

        forwarded.__name__ = name
        forwarded.__wrapped__ = value  # type: ignore[attr-defined]
        return forwarded

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(_get(self, "_st_wrapped"), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(_get(self, "_st_wrapped"), name)

    def __dir__(self) -> Iterable[str]:
        return dir(_get(self, "_st_wrapped"))

    # ---- container modules (ModuleList, Sequential, ModuleDict) ----------------------------------------
    def __len__(self) -> int:
        return len(_get(self, "_st_wrapped"))

    def __iter__(self) -> Iterator:
        return iter(_get(self, "_st_wrapped"))

    def __getitem__(self, key: Any) -> Any:
        return _get(self, "_st_wrapped")[key]

    def __contains__(self, key: Any) -> bool:
        return key in _get(self, "_st_wrapped")

    def __bool__(self) -> bool:
        return bool(_get(self, "_st_wrapped"))

    def __eq__(self, other: Any) -> bool:
        return other is self or other is _get(self, "_st_wrapped")

    def __hash__(self) -> int:
        return hash(_get(self, "_st_wrapped"))
