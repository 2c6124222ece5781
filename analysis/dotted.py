"""Dotted key paths of nested mappings: ``{"method": {"cost": "none"}}`` <-> ``method.cost``.

The one spelling shared by the sweep grid and its include/exclude points (``orchestrator.spec``),
the analysis plan's selectors (``analysis.plan``), the axis columns of the results
(``analysis.results``) and the MLflow params of a trial (``orchestrator.tracking``). It lives in
the analysis package because everything may import that without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["flatten_dotted", "get_dotted"]


def flatten_dotted(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys; a value that is not a non-empty mapping (a list such as a grid
    axis, a scalar, ``{}``) ends the key. Keys already dotted pass through."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dotted(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def get_dotted(data: Mapping, dotted: str) -> Any:
    """The value at a dotted key path of nested mappings; None where the path does not exist."""
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node
