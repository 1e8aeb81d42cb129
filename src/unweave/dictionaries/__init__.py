"""Sparse dictionaries (started: ReLU and TopK SAEs with their metrics; see the README for what is missing)."""

from unweave.dictionaries.sae import SAE, SAEConfig, train_many, train_sae

__all__ = ["SAE", "SAEConfig", "train_many", "train_sae"]
