"""Optional dependencies: :func:`require` imports one or raises ``ImportError`` naming the extra that installs it,
``from None`` (httpx's http2 extra), so that the fix is the first thing a user reads."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, needed_by: str = "") -> ModuleType:
    """``importlib.import_module(module)``, or ``ImportError: <module> is not installed: pip install
    'shapetrace[<extra>]'`` (``needed_by`` says what needs it; the original reason is kept when the package is
    there but fails to import)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".", 1)[0]
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".", 1)[0] == package
        why = "is not installed" if missing else f"cannot be imported ({e})"
        who = f" ({needed_by} needs it)" if needed_by else ""
        raise ImportError(f"{package} {why}{who}: pip install 'shapetrace[{extra}]'") from None
