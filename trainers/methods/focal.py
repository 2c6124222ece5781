"""The base recipe's EXPR loss: class-weighted focal cross-entropy (docs/methods.md §2), and ``ot``.

``ot`` is the same objective with the circumplex-cost OT term on by default (docs/methods.md §5); any
method can take ``cost``/``lam``, so the two names only differ in their default cost.
"""

from __future__ import annotations

from pydantic import Field

from trainers.methods.base import Method, MethodOptions, register_method


@register_method("focal")
class Focal(Method):
    """Class-weighted focal CE, γ = 2 (the study's γ is not legible; docs/methods.md §2 default)."""

    class Options(MethodOptions):
        gamma: float = Field(2.0, ge=0.0)  # focusing parameter γ


@register_method("ot")
class CircumplexOT(Focal):
    """Focal CE + λ·L_OT with the circumplex cost unless another ``cost`` is given (docs/methods.md §5)."""

    default_cost = "circumplex"
