"""Description length: how many bits a description of (network, dataset) costs within a
tolerance on the network's output, and which description is shortest (`unweave mdl`)."""

from unweave.mdl.bases import Analytic, Basis, Dictionary, Linear, LookupTable, Neurons, pca, pursuit
from unweave.mdl.describe import Row, SiteData, WeightBits, describe, weight_bits
from unweave.mdl.program import ProgramBits, program_bits

__all__ = [
    "Analytic",
    "Basis",
    "Dictionary",
    "Linear",
    "LookupTable",
    "Neurons",
    "ProgramBits",
    "Row",
    "SiteData",
    "WeightBits",
    "describe",
    "pca",
    "program_bits",
    "pursuit",
    "weight_bits",
]
