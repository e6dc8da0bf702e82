"""torch integration of hashlab (the only place hashlab imports torch).

- SparseMLPModule: a dense torch.nn.Module with a trained SparseMLP's weights.
"""
from .mlp import SparseMLPModule

__all__ = ["SparseMLPModule"]
