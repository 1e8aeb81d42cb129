"""Description length: how many bits a description of (network, dataset) costs within a
tolerance on the network's output, and which description is shortest (`unweave mdl`)."""

from unweave.mdl.bases import Analytic, Basis, Dictionary, Linear, LookupTable, Neurons, pca, pursuit
from unweave.mdl.describe import Calibration, Row, SiteData, WeightBits, calibrate, describe, weight_bits
from unweave.mdl.program import ProgramBits, program_bits
from unweave.mdl.streamed import StoreSource, describe_store

__all__ = [
    "Analytic",
    "Basis",
    "Calibration",
    "Dictionary",
    "Linear",
    "LookupTable",
    "Neurons",
    "ProgramBits",
    "Row",
    "SiteData",
    "StoreSource",
    "WeightBits",
    "calibrate",
    "describe",
    "describe_store",
    "pca",
    "program_bits",
    "pursuit",
    "weight_bits",
]
