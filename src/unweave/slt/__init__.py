"""Singular learning theory: the local learning coefficient, its diagnostics, closed forms."""

from unweave.slt.auto import AutoLLC, AutoRule, auto_llc
from unweave.slt.hessian import HessianSummary, hessian_summary
from unweave.slt.llc import LLCResult, estimate_llc
from unweave.slt.sgld import LLCError, SGLDConfig
from unweave.slt.trajectory import chosen_settings, llc_over_checkpoints

__all__ = [
    "AutoLLC",
    "AutoRule",
    "HessianSummary",
    "LLCError",
    "LLCResult",
    "SGLDConfig",
    "auto_llc",
    "chosen_settings",
    "estimate_llc",
    "hessian_summary",
    "llc_over_checkpoints",
]
