"""A dense torch twin of hashlab.SparseMLP, for inference or fine-tuning in torch."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


class SparseMLPModule(nn.Module):
    """input (n, input_dim) -> hidden layers -> logits (n, output_dim), dense.

    forward accepts a torch tensor (dense, or sparse COO/CSR) or a scipy.sparse
    matrix; returns float32 logits. Weights: ``input`` (input_dim, hidden[0]) used as
    x @ input, ``hidden`` nn.Linear layers, ``output`` nn.Linear(hidden[-1], output_dim).
    """

    def __init__(self, input_dim, output_dim, hidden=(128,), activation="relu"):
        super().__init__()
        self.input = nn.Parameter(torch.zeros(input_dim, hidden[0]))
        self.input_bias = nn.Parameter(torch.zeros(hidden[0]))
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(hidden[:-1], hidden[1:]))
        self.output = nn.Linear(hidden[-1], output_dim)
        self.act = nn.ReLU() if activation == "relu" else nn.Tanh()

    @classmethod
    def from_sparse_mlp(cls, model):
        m = cls(model.input_dim, model.output_dim, model.hidden, model.activation)
        with torch.no_grad():
            m.input.copy_(torch.from_numpy(model.layers[0].w))
            m.input_bias.copy_(torch.from_numpy(model.biases[0].w))
            for lin, W, b in zip(m.hidden, model.layers[1:], model.biases[1:]):
                lin.weight.copy_(torch.from_numpy(W.w.T.copy()))  # ours is (in, out)
                lin.bias.copy_(torch.from_numpy(b.w))
            m.output.weight.copy_(torch.from_numpy(model.out_w.w))
            m.output.bias.copy_(torch.from_numpy(model.out_b.w))
        return m

    def forward(self, x):
        if sp.issparse(x):
            x = x.tocoo()
            idx = torch.from_numpy(np.vstack([x.row, x.col]).astype(np.int64))
            x = torch.sparse_coo_tensor(idx, torch.from_numpy(x.data.astype(np.float32)), x.shape,
                                        check_invariants=True)
        if x.layout != torch.strided:
            h = torch.sparse.mm(x.to(torch.float32), self.input)
        else:
            h = x.to(torch.float32) @ self.input
        h = self.act(h + self.input_bias)
        for lin in self.hidden:
            h = self.act(lin(h))
        return self.output(h)
