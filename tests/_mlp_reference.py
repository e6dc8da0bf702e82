"""References for SparseMLP (tests/test_slide.py, tests/test_distributed.py): full-softmax
training in torch autograd, float64 and float32 in several orders, and a derived bound on
the float32 error of the logits.

Training: a few Adam steps divide by sqrt(v), which no error analysis bounds usefully, so
the trained weights are checked by method (a) of tests/_tolerance.py: ``TorchMLP(model)``
(float64) is the reference and ``TorchMLP(model, "float32", order)`` for ``ORDERS32`` the
independent float32 computations (torch is imported by them only). Order 0 is the network as given; the
others permute the batch rows, the input features, the units of every hidden layer and
the labels, which changes the order of every sum (matrix products, gradients over the
batch, the softmax's log-sum-exp) and leaves the function unchanged.

Inference: ``logits_bound`` is method (b), a forward error analysis of relu layers.
"""
import numpy as np

from _tolerance import gamma

ORDERS32 = tuple(range(6))


class TorchMLP:
    """The network of a SparseMLP (every label active) in torch autograd, with Adam whose
    input-layer rows move only when their feature is in the batch (SparseMLP's lazy rows)."""

    def __init__(self, model, dtype="float64", order=0):
        import torch
        self.torch = torch
        rng = np.random.default_rng(1000 + order)
        widths = [model.input_dim, *model.hidden, model.output_dim]
        self.perm = [np.arange(n) if order == 0 else rng.permutation(n) for n in widths]
        self.order, self.rng, self.dtype = order, rng, getattr(torch, dtype)
        self.act = torch.relu if model.activation == "relu" else torch.tanh
        self.lr = model.lr
        p = self.perm

        def t(a):
            return torch.tensor(np.array(a, dtype=np.float64), dtype=self.dtype, requires_grad=True)
        self.W = [t(L.w[p[i]][:, p[i + 1]]) for i, L in enumerate(model.layers)]
        self.b = [t(B.w[p[i + 1]]) for i, B in enumerate(model.biases)]
        self.Wo, self.bo = t(model.out_w.w[p[-1]][:, p[-2]]), t(model.out_b.w[p[-1]])
        self.params = self.W + self.b + [self.Wo, self.bo]
        self.m = [torch.zeros_like(q) for q in self.params]
        self.v = [torch.zeros_like(q) for q in self.params]
        self.t = 0

    def step(self, X, labels):
        """One Adam step on CSR rows X with label lists ``labels``; returns the loss, the sum
        over the rows of logsumexp(z) - mean(z[labels])."""
        torch = self.torch
        rows = np.arange(X.shape[0]) if self.order == 0 else self.rng.permutation(X.shape[0])
        inv_out = np.argsort(self.perm[-1])
        Xd = torch.tensor(X.toarray()[rows][:, self.perm[0]], dtype=self.dtype)
        h = self.act(Xd @ self.W[0] + self.b[0])
        for W, b in zip(self.W[1:], self.b[1:]):
            h = self.act(h @ W + b)
        z = h @ self.Wo.T + self.bo
        loss = sum(torch.logsumexp(z[i], 0) - z[i, inv_out[labels[r]]].mean() for i, r in enumerate(rows))
        for q in self.params:
            q.grad = None
        loss.backward()
        self.t += 1
        present = torch.tensor(np.diff(X.tocsc().indptr)[self.perm[0]] > 0)
        with torch.no_grad():
            for j, (q, m, v) in enumerate(zip(self.params, self.m, self.v)):
                g = q.grad
                sel = present if j == 0 else slice(None)
                m[sel] = 0.9 * m[sel] + 0.1 * g[sel]
                v[sel] = 0.999 * v[sel] + 0.001 * g[sel] ** 2
                mh, vh = m[sel] / (1 - 0.9 ** self.t), v[sel] / (1 - 0.999 ** self.t)
                q[sel] -= self.lr * mh / (vh.sqrt() + 1e-8)
        return loss.item()

    def state(self, kind="w"):
        """The weights (kind "w") or Adam moments ("m", "v") in the order of SparseMLP's
        layers + biases + [out_w, out_b], un-permuted, float64."""
        arrays = {"w": self.params, "m": self.m, "v": self.v}[kind]
        inv = [np.argsort(p) for p in self.perm]
        L = len(self.W)
        out = []
        for j, a in enumerate(arrays):
            a = a.detach().numpy().astype(np.float64)
            if j < L:
                out.append(a[inv[j]][:, inv[j + 1]])
            elif j < 2 * L:
                out.append(a[inv[j - L + 1]])
            elif j == 2 * L:
                out.append(a[inv[-1]][:, inv[-2]])
            else:
                out.append(a[inv[-1]])
        return out


def logits_bound(layers, biases, out_w, out_b, X):
    """float64 logits of relu layers on CSR rows X and the bound on the error of any float32
    computation of them (any summation order, with or without FMA), by layers: with the
    input of a layer off by at most E, its pre-activation a = h W + b is off by at most
    E |W| + gamma_{k+1} ((|h| + E) |W| + |b|) (Higham, section 3.1; k terms and the bias),
    and relu does not increase it. k is each row's non-zero count for the sparse input
    layer. Returns (logits (n, L), bound (n, L))."""
    h = X.astype(np.float64)
    E = 0.0
    ws = [(np.asarray(W, np.float64), np.asarray(b, np.float64)) for W, b in zip(layers, biases)]
    ws.append((np.asarray(out_w, np.float64).T, np.asarray(out_b, np.float64)))
    for i, (W, b) in enumerate(ws):
        g = gamma(np.diff(X.indptr) + 1)[:, None] if i == 0 else gamma(W.shape[0] + 1)
        Wa = np.abs(W)
        EW = 0.0 if i == 0 else E @ Wa
        E = EW + g * (np.asarray(abs(h) @ Wa) + EW + np.abs(b))
        a = np.asarray(h @ W) + b
        h = a if i == len(ws) - 1 else np.maximum(a, 0)
    return h, E
