"""Registry of EXPR-side methods; one file per method (STYLE: registries like timm)."""

# importing a method module registers it: focal (focal, ot), docs/methods.md §8-§12 (the others)
from trainers.methods import ada_df, caf, dual_fusion, focal, grefel, ldam_asl, logit_adjust, pcgrad  # noqa: F401
from trainers.methods.base import METHOD_REGISTRY, Method, MethodContext, StepState, create_method, register_method

__all__ = ["METHOD_REGISTRY", "Method", "MethodContext", "StepState", "create_method", "register_method"]
