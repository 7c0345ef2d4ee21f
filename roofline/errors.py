"""The one exception type of the roofline package."""

from __future__ import annotations

__all__ = ["RooflineError"]


class RooflineError(ValueError):
    """Bad input to the roofline package: an unknown device, a malformed device file,
    an op with impossible shapes, or measurements that cannot be fitted.

    Messages say what was wrong and what to do about it. Callers (the dsa package,
    the CLI) may wrap it in their own exception type.
    """
