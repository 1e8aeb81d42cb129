"""Singular learning theory: the local learning coefficient, its diagnostics, closed forms."""

from unweave.slt.calibrate import Calibration, calibrate, llc_over_checkpoints
from unweave.slt.hessian import HessianSummary, hessian_summary
from unweave.slt.llc import LLCResult, estimate_llc
from unweave.slt.sgld import LLCError, SGLDConfig

__all__ = [
    "Calibration",
    "HessianSummary",
    "LLCError",
    "LLCResult",
    "SGLDConfig",
    "calibrate",
    "estimate_llc",
    "hessian_summary",
    "llc_over_checkpoints",
]
