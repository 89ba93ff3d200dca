"""Utilities with torch.utils' names: `gn.utils.data` (Dataset, TensorDataset, DataLoader, random_split)."""
from gpunn.utils import data

__all__ = ["data"]
