"""Registry of EXPR-side methods; one file per method (STYLE: registries like timm)."""

from trainers.methods.base import METHODS, Method, MethodContext, StepState, create_method, register_method
from trainers.methods import focal  # noqa: F401  (registers focal, ot)

__all__ = ["METHODS", "Method", "MethodContext", "StepState", "create_method", "register_method"]
