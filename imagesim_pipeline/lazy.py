"""Package namespaces whose names load on first use (PEP 562).

A stage's package re-exports its public names without importing every module up front, so a
light consumer (the GPU trainer reading chip names and label CSVs) does not need the heavy
dependencies of the modules it never uses (GDAL/rasterio for chipping, say).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[Callable[[str], Any], list[str]]:
    """(``__getattr__``, ``__all__``) for ``package``: ``exports`` maps each submodule to the names it gives."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)

    return __getattr__, sorted(module_of)
