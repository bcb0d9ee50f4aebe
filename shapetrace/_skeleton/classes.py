"""Classes by name, both ways, and only from installed packages.

A skeleton names every class it rebuilds as ``"package.module:Qual.Name"``. :func:`resolve` imports such a name
only when the module is found on the import path *outside* the export folder (a folder cannot bring its own code,
whatever the working directory), and only when the name is a class: no function, no module attribute that is not
a type, is ever looked up and called. Classes defined in ``__main__`` cannot be named (another process has another
``__main__``); :func:`name_of` says so when the skeleton is written.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from ..errors import SkeletonError

__all__ = ["name_of", "resolve"]


def name_of(cls: type, where: str) -> str:
    """``"module:Qual"`` for ``cls``; raises :class:`SkeletonError` for a class another process cannot import."""
    module, qual = cls.__module__, cls.__qualname__
    if module == "__main__" or "<locals>" in qual:
        raise SkeletonError(f"{where} is a {qual} defined in {'__main__' if module == '__main__' else 'a function'}; "
                            f"another process cannot import it: define the class in an importable module")
    return f"{module}:{qual}"


def _origin_inside(module: str, folder: Path) -> bool:
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return False
    origins = [spec.origin] if spec and spec.origin else []
    origins += list(spec.submodule_search_locations or []) if spec else []
    root = folder.resolve()
    return any(Path(o).resolve().is_relative_to(root) for o in origins if o)


def resolve(name: str, folder: Path) -> type:
    """The class named ``name``, imported from an installed package; :class:`SkeletonError` otherwise."""
    module, sep, qual = name.partition(":")
    if not sep or not module or not qual or module == "__main__":
        raise SkeletonError(f"the skeleton names {name!r}, not an importable class; re-export the object")
    if _origin_inside(module, folder):
        raise SkeletonError(f"the skeleton names {name!r}, whose module would be imported from inside the export "
                            f"folder {folder}; shapetrace only rebuilds classes of installed packages")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise SkeletonError(f"the skeleton needs {name!r}, but {module!r} is not installed here ({e}); install the "
                            f"package the object was exported with") from e
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise SkeletonError(f"the skeleton names {name!r}, which is not a class in the installed {module!r}; "
                            f"re-export the object with the versions installed here")
    return obj
