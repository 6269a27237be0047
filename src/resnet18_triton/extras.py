"""Import optional dependencies with a one-line hint naming the extra that provides them."""

from __future__ import annotations

import importlib
from types import ModuleType

from resnet18_triton.errors import MissingExtraError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise MissingExtraError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        # Only a missing top-level distribution is an extras problem; a broken install is not.
        missing = (error.name or "").split(".")[0]
        if missing and missing == module.split(".")[0]:
            raise MissingExtraError(extra, module) from None
        raise
