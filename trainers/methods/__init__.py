"""Registry of EXPR-side methods; one file per method (STYLE: registries like timm)."""

# importing a method module registers it: focal (focal, ot), METHODS §8-§12 (the others)
from trainers.methods import ada_df, caf, dual_fusion, focal, grefel, ldam_asl, logit_adjust, pcgrad  # noqa: F401
from trainers.methods.base import METHODS, Method, MethodContext, StepState, create_method, register_method

__all__ = ["METHODS", "Method", "MethodContext", "StepState", "create_method", "register_method"]
