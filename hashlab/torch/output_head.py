"""LSH output head: inference over a huge nn.Linear (LM head, XMC layer) without all logits.

``LSHOutputHead(linear)`` wraps an ``nn.Linear`` (out_features classes) with a
``hashlab.retrieval.OutputRetriever`` over its rows. ``forward(x)`` returns logits of
the full shape (..., out_features): exact logits on the retrieved candidates and
``-inf`` elsewhere, so that argmax, sampling (top-k / top-p / temperature) and
transformers' ``generate`` work unchanged (greedy decoding equals the dense head's
whenever the top logit is retrieved). ``topk(x, k)`` returns (values, indices) directly.

``install_lsh_head(model, ...)`` puts one on a transformers model (its
``get_output_embeddings()``, e.g. ``lm_head``), optionally calibrated on hidden states
of real inputs (``calibration=`` token ids: the model is run once and the head's
inputs recorded); ``remove_lsh_head(model)`` puts the original Linear back. Tied
embeddings stay tied: the head keeps the Linear (and its weight) as a submodule.

Inference only: the head has no backward, and after the weights change call
``refresh()``. Weights of other dtypes are indexed and scored in float32 (a float32
copy is kept); float32 CPU weights are used without copying.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..retrieval import OutputRetriever

__all__ = ["LSHOutputHead", "install_lsh_head", "remove_lsh_head"]


class LSHOutputHead(nn.Module):
    """Inference-time LSH replacement of an ``nn.Linear`` output layer.

    Parameters
    ----------
    linear : torch.nn.Linear (in_features = dim, out_features = classes), on the CPU.
    queries : optional (m, dim) calibration hidden states (tensor or array) for the
        retriever's query centring and balancing (recommended for language models).
    **retriever_kwargs : passed to ``OutputRetriever`` (k, l, target_fraction, seed,
        search, hasher, max_candidates, kind, balance).
    """

    def __init__(self, linear, queries=None, **retriever_kwargs):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        if linear.weight.device.type != "cpu":
            raise TypeError(f"linear: expected a CPU module, got weights on {linear.weight.device}")
        self.linear = linear
        self._kwargs = dict(retriever_kwargs)
        self._queries = None if queries is None else _to_numpy(queries).reshape(-1, linear.in_features)
        self.refresh()

    def refresh(self):
        """Re-indexes the Linear's current weights (call after they change)."""
        W = self.linear.weight.detach()
        b = None if self.linear.bias is None else self.linear.bias.detach()
        W = W.numpy() if W.dtype == torch.float32 else W.float().numpy()
        b = None if b is None else (b.numpy() if b.dtype == torch.float32 else b.float().numpy())
        self.retriever = OutputRetriever(W, b, queries=self._queries, **self._kwargs)
        return self

    @property
    def weight(self):
        return self.linear.weight

    @property
    def bias(self):
        return self.linear.bias

    @property
    def in_features(self):
        return self.linear.in_features

    @property
    def out_features(self):
        return self.linear.out_features

    def _flat(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise TypeError(f"x: expected a CPU tensor, got one on {x.device}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension {self.in_features}, got {tuple(x.shape)}")
        lead = tuple(x.shape[:-1])
        H = x.detach().reshape(-1, self.in_features)
        H = H.float().contiguous().numpy() if H.dtype != torch.float32 else H.contiguous().numpy()
        return H, lead

    def forward(self, x):
        """Logits (..., out_features) in x's dtype: exact on the candidates, -inf elsewhere.

        A row with no candidate at all gets its dense logits.
        """
        H, lead = self._flat(x)
        r = self.retriever
        indptr, ids, _ = r._candidates(H, r.max_candidates)
        sc = r._gather(H, indptr, ids)
        # built in numpy: a torch op here would wake torch's OpenMP pool, whose spinning
        # threads then compete with hashlab's on the next call (batch-1 latency)
        n, N = H.shape[0], self.out_features
        out = np.full((n, N), -np.inf, dtype=np.float32)
        lens = np.diff(indptr)
        flat = np.repeat(np.arange(n, dtype=np.int64) * N, lens) + ids
        out.reshape(-1)[flat] = sc
        empty = np.flatnonzero(lens == 0)
        if empty.size:
            W = self.retriever.weight
            out[empty] = H[empty] @ W.T + (0 if self.retriever.bias is None else self.retriever.bias)
        out = torch.from_numpy(out)
        if x.dtype != torch.float32:
            out = out.to(x.dtype)
        return out.reshape(*lead, self.out_features)

    def topk(self, x, k=5):
        """(values, indices) of the k largest logits along the last dimension, as in
        torch.topk: float32 values and int64 indices of shape (..., k)."""
        H, lead = self._flat(x)
        s, l = self.retriever.topk(H, k)
        kk = s.shape[1]
        return torch.from_numpy(s).reshape(*lead, kk), torch.from_numpy(l).reshape(*lead, kk)

    def extra_repr(self):
        return repr(self.retriever)


def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().float().contiguous().numpy()
    return np.asarray(x, dtype=np.float32)


def install_lsh_head(model, calibration=None, max_calibration=4096, **kwargs):
    """Replaces a transformers model's output embeddings (an nn.Linear) with an LSHOutputHead.

    calibration: optional token ids (LongTensor (batch, seq) or (seq,)): the model runs
    once on them and the head's input hidden states (at most ``max_calibration`` rows)
    calibrate the retriever. kwargs go to LSHOutputHead / OutputRetriever. Returns the head.
    """
    if not hasattr(model, "get_output_embeddings") or not hasattr(model, "set_output_embeddings"):
        raise TypeError(f"model: expected a transformers PreTrainedModel, got {type(model).__name__}")
    linear = model.get_output_embeddings()
    if isinstance(linear, LSHOutputHead):
        raise ValueError("model: an LSH head is already installed; call remove_lsh_head(model) first")
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"model: expected output embeddings that are an nn.Linear, got {type(linear).__name__}")
    queries = kwargs.pop("queries", None)
    if calibration is not None:
        ids = torch.as_tensor(calibration)
        if ids.dim() == 1:
            ids = ids[None]
        seen = []
        handle = linear.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
        try:
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError("calibration: the model did not call its output embeddings")
        Hc = torch.cat([h.reshape(-1, linear.in_features) for h in seen])[-max_calibration:]
        queries = Hc if queries is None else queries
    head = LSHOutputHead(linear, queries=queries, **kwargs)
    model.set_output_embeddings(head)
    return head


def remove_lsh_head(model):
    """Puts back the nn.Linear an LSHOutputHead replaced; returns it (no-op if none installed)."""
    head = model.get_output_embeddings()
    if isinstance(head, LSHOutputHead):
        model.set_output_embeddings(head.linear)
        return head.linear
    return head
