"""Sparse dictionaries: SAEs (ReLU, TopK, BatchTopK, JumpReLU), transcoders, and sparse
MLPs at several layers trained with a penalty on the connections between them."""

from unweave.dictionaries.sae import SAE, SAEConfig, geometric_median
from unweave.dictionaries.train import TrainConfig, train_many, train_sae

__all__ = ["SAE", "SAEConfig", "TrainConfig", "geometric_median", "train_many", "train_sae"]
