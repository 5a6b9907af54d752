"""Optional dependencies (the package's extras), imported with the fix in the error."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or explain which extra provides it.

    Args:
        module: The module to import, e.g. "gymnasium".
        extra: The extra of ``blendtorch-ray`` that installs it, e.g. "rl".
        feature: What needs it, for the message.

    Returns:
        The imported module.

    Raises:
        ImportError: The module is missing; the message names the ``pip install`` fix.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{feature} needs {module}, which is not installed: pip install 'blendtorch-ray[{extra}]'"
        ) from exc
