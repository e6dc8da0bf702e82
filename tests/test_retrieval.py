"""OutputRetriever (HALOS-style output-space retrieval) against brute-force numpy references."""
import numpy as np
import pytest
import scipy.sparse as sp

from _tolerance import U, assert_within, gamma, unit_norm_bound
from hashlab.retrieval import OutputRetriever, csr_topk, dense_topk


def layer(rng, n=3000, d=24, bias=True, spread=0.3):
    W = rng.standard_normal((n, d)).astype(np.float32)
    W *= np.exp(spread * rng.standard_normal(n)).astype(np.float32)[:, None]
    W += 0.5  # a common offset, as trained output layers have
    b = (0.3 * rng.standard_normal(n)).astype(np.float32) if bias else None
    return W, b


def planted_queries(rng, W, m=200, noise=0.4):
    """Hidden vectors close to the direction of random classes: the class has a high logit."""
    y = rng.integers(0, W.shape[0], m)
    Wc = W - W.mean(0)
    H = Wc[y] / np.linalg.norm(Wc[y], axis=1, keepdims=True)
    H = H + noise * rng.standard_normal(H.shape) / np.sqrt(W.shape[1])
    return (4 * H).astype(np.float32), y


def brute_topk(H, W, b, k):
    S = H.astype(np.float64) @ W.T.astype(np.float64) + (0 if b is None else b)
    order = np.lexsort((np.broadcast_to(np.arange(W.shape[0]), S.shape), -S), axis=1)[:, :k]
    return np.take_along_axis(S, order, 1), order


def score_bound(H, W, b):
    """Bound on the float32 error of H @ W.T + b in any order: gamma_{d+1} (|H| |W|^T + |b|)."""
    H, W = np.abs(H.astype(np.float64)), np.abs(W.astype(np.float64))
    return gamma(H.shape[1] + 1) * (H @ W.T + (0 if b is None else np.abs(b.astype(np.float64))))


def assert_unambiguous_ranks(exact, bound):
    """Test-data precondition: consecutive ranked scores (rows of exact, best first) lie
    further apart than their float32 error bounds, so any summation order ranks them the same."""
    assert (-np.diff(exact, axis=1) > bound[:, 1:] + bound[:, :-1]).all(), "ambiguous test data: a near tie"


def popcount_rows(x):
    return np.unpackbits(x.view(np.uint8), axis=1).sum(1)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("calibrated", [True, False])
def test_transform_ranks_by_inner_product(bias, calibrated):
    rng = np.random.default_rng(0)
    W, b = layer(rng, n=500, d=9, bias=bias)
    H, _ = planted_queries(rng, W, 40)
    r = OutputRetriever(W, b, queries=H if calibrated else None, search="scan", l=8)
    Q, I = r.transform_queries(H).astype(np.float64), r.transform_items().astype(np.float64)
    assert Q.shape[1] == I.shape[1] == r.hash_dim == 9 + (2 if (bias or calibrated) else 1)
    # unit vectors in float64, each coordinate rounded once to float32: |norm - 1| <= u
    # (plus the float64 arithmetic, gamma_{d+4} in double precision)
    norm_bound = U + gamma(Q.shape[1] + 4, u=2.0 ** -53)
    assert_within(np.linalg.norm(I, axis=1), np.ones(len(I)), norm_bound, "item norms")
    assert_within(np.linalg.norm(Q, axis=1), np.ones(len(Q)), norm_bound, "query norms")
    cos = Q @ I.T
    logits = H.astype(np.float64) @ W.T.astype(np.float64) + (0 if b is None else b)
    # cos = (logit - (a per-query constant)) / (a per-query positive scale): exactly affine per
    # row for the float64 vectors. Rounding them to float32 moves each cos by at most
    # e = (2u + u^2) |Q| |I|^T; the least-squares residual is (1 - projection) e, whose entries
    # are at most |e|_2 (plus the float64 solve's, backward stable: gamma_n in double
    # precision on |A| |coef| + |cos|)
    e = (2 * U + U * U) * (np.abs(Q) @ np.abs(I).T)
    for i in range(len(H)):
        A = np.stack([logits[i], np.ones(W.shape[0])], 1)
        coef, *_ = np.linalg.lstsq(A, cos[i], rcond=None)
        assert coef[0] > 0
        f64 = gamma(W.shape[0], u=2.0 ** -53) * (np.abs(A) @ np.abs(coef) + np.abs(cos[i]))
        assert_within(A @ coef, cos[i], np.linalg.norm(e[i]) + f64, "affine fit")


@pytest.mark.parametrize("search", ["scan", "tables"])
def test_topk_with_every_class_a_candidate_equals_brute_force(search):
    rng = np.random.default_rng(1)
    W, b = layer(rng, n=700, d=17)
    H, _ = planted_queries(rng, W, 30)
    r = OutputRetriever(W, b, search=search, k=1 if search == "tables" else None, l=40, max_candidates=700)
    s, l = r.topk(H, 7)
    bs, bl = brute_topk(H, W, b, 7)
    assert s.dtype == np.float32 and l.dtype == np.int64 and s.shape == (30, 7)
    bound = np.take_along_axis(score_bound(H, W, b), bl, 1)
    assert_unambiguous_ranks(bs, bound)
    np.testing.assert_array_equal(l, bl)
    assert_within(s, bs, bound, "scores")


@pytest.mark.parametrize("search", ["scan", "tables"])
def test_topk_is_the_exact_top_of_the_candidates(search):
    rng = np.random.default_rng(2)
    W, b = layer(rng, n=4000, d=20)
    H, _ = planted_queries(rng, W, 50)
    r = OutputRetriever(W, b, search=search, target_fraction=0.02)
    indptr, ids, counts = r.candidates(H)
    s, l = r.topk(H, 3)
    for i in range(len(H)):
        c = ids[indptr[i]:indptr[i + 1]]
        assert len(set(c.tolist())) == c.size <= r.max_candidates
        assert np.all(np.diff(counts[indptr[i]:indptr[i + 1]]) <= 0)  # best count first
        if c.size >= 3:
            exact = H[i].astype(np.float64) @ W[c].T.astype(np.float64) + b[c]
            order = np.lexsort((c, -exact))[:3]
            bound = score_bound(H[i:i + 1], W[c[order]], b[c[order]])
            assert_unambiguous_ranks(exact[order][None], bound)
            np.testing.assert_array_equal(l[i], c[order])
            assert_within(s[i], exact[order], bound[0], "scores")
        else:  # dense fallback
            np.testing.assert_array_equal(l[i], brute_topk(H[i:i + 1], W, b, 3)[1][0])


def test_scan_counts_are_agreeing_sign_bits():
    rng = np.random.default_rng(3)
    W, b = layer(rng, n=900, d=13)
    H, _ = planted_queries(rng, W, 20)
    r = OutputRetriever(W, b, search="scan", k=32, l=4, max_candidates=50)
    bi = r.hasher.bits(r.transform_items())
    bq = r.hasher.bits(r.transform_queries(H))
    indptr, ids, counts = r.candidates(H)
    for i in range(len(H)):
        agree = 128 - popcount_rows(bi ^ bq[i])
        c = ids[indptr[i]:indptr[i + 1]]
        np.testing.assert_array_equal(counts[indptr[i]:indptr[i + 1]], agree[c])
        assert agree[c].min() >= np.sort(agree)[::-1][49]  # the 50 best (ties anywhere)


@pytest.mark.parametrize("search, spread", [("scan", 0.3), ("tables", 0.0)])
def test_planted_classes_are_retrieved(search, spread):
    rng = np.random.default_rng(4)
    W, b = layer(rng, n=6000, d=32, bias=False, spread=spread)
    H, y = planted_queries(rng, W, 300, noise=0.3)
    r = OutputRetriever(W, search=search, target_fraction=0.01, seed=1, k=None if search == "scan" else 5)
    rep = r.recall_report(H, y)
    assert rep["candidate_fraction"] <= 0.01 + 1e-9
    assert rep["top_logit_recall"] > 0.9, rep
    assert rep["label_recall"] > 0.9, rep
    # a random index of the same size would find ~1%
    _, l = r.topk(H, 1)
    assert (l[:, 0] == brute_topk(H, W, None, 1)[1][:, 0]).mean() > 0.9


def test_norm_ranges_help_short_rows():
    rng = np.random.default_rng(4)
    W, b = layer(rng, n=6000, d=32, bias=False, spread=0.5)
    H, y = planted_queries(rng, W, 300, noise=0.3)
    one = OutputRetriever(W, search="tables", k=6, l=64, target_fraction=0.01, seed=1)
    many = OutputRetriever(W, search="tables", k=6, l=64, target_fraction=0.01, seed=1, norm_ranges=16)
    assert many.recall_report(H, y)["label_recall"] > one.recall_report(H, y)["label_recall"] + 0.3
    I = many.transform_items().astype(np.float64)
    assert_within(np.linalg.norm(I, axis=1), np.ones(len(I)), unit_norm_bound(I.shape[1]), "item norms")


def test_recall_report_against_its_definition():
    rng = np.random.default_rng(5)
    W, b = layer(rng, n=1500, d=16)
    H, y = planted_queries(rng, W, 60, noise=1.5)
    r = OutputRetriever(W, b, search="tables", target_fraction=0.01)
    indptr, ids, _ = r.candidates(H)
    cand = [set(ids[indptr[i]:indptr[i + 1]].tolist()) for i in range(len(H))]
    top = brute_topk(H, W, b, 1)[1][:, 0]
    labels = [[int(y[i]), int((y[i] + 1) % 1500)] for i in range(len(H))]
    rep = r.recall_report(H, labels)
    assert rep["top_logit_recall"] == pytest.approx(np.mean([top[i] in cand[i] for i in range(len(H))]))
    pairs = [lab in cand[i] for i in range(len(H)) for lab in labels[i]]
    assert rep["label_recall"] == pytest.approx(np.mean(pairs))
    assert rep["label_recall_any"] == pytest.approx(np.mean([any(x in cand[i] for x in labels[i])
                                                             for i in range(len(H))]))
    assert rep["mean_candidates"] == pytest.approx(np.diff(indptr).mean())
    Y = sp.csr_matrix((np.ones(2 * len(H)), np.array(labels).ravel(), np.arange(0, 2 * len(H) + 1, 2)),
                      shape=(len(H), 1500))
    assert r.recall_report(H, Y)["label_recall"] == pytest.approx(rep["label_recall"])


def test_k_larger_than_classes_and_fallback():
    rng = np.random.default_rng(6)
    W, b = layer(rng, n=12, d=5)
    H, _ = planted_queries(rng, W, 4)
    r = OutputRetriever(W, b, max_candidates=1)
    s, l = r.topk(H, 50)
    assert l.shape == (4, 12)
    np.testing.assert_array_equal(l, brute_topk(H, W, b, 12)[1])
    t = OutputRetriever(W, b, search="tables", k=24, l=1)  # almost no collisions
    indptr, _, _ = t.candidates(H)
    assert (np.diff(indptr) < 3).any()
    s, l = t.topk(H, 3)  # rows with fewer than k = 3 candidates: dense fallback
    np.testing.assert_array_equal(l, brute_topk(H, W, b, 3)[1])
    s1, l1 = r.topk(H[0], 2)  # 1-D: one query
    assert l1.shape == (1, 2)


@pytest.mark.parametrize("search", ["scan", "tables"])
def test_update_reindexes_changed_rows(search):
    rng = np.random.default_rng(7)
    W, b = layer(rng, n=2000, d=12)
    W0 = W.copy()
    kw = dict(k=1, l=8) if search == "tables" else {}  # tables with k=1: every class collides
    r = OutputRetriever(W0, b, search=search, target_fraction=0.02, **kw)
    rows = np.array([5, 17, 1999])
    H, _ = planted_queries(rng, W, 3)
    new = 0.5 * (W0[rows] - W0.mean(0)) + W0.mean(0)  # shorter rows: same transform
    new = new[::-1].copy()
    assert r.update(rows, new) == 3
    np.testing.assert_array_equal(W0[rows], new)
    fresh = OutputRetriever(W0.copy(), b, search=search, target_fraction=0.02, **kw)
    if search == "scan":
        np.testing.assert_array_equal(r._bits[rows], r.hasher.bits(r.transform_items(rows)))
    a, f = r.candidates(H), fresh.candidates(H)
    # same data, same seed: the same candidate sets (the transform differs only by its
    # centring mean, which the update keeps; compare with exact scores instead when unsure)
    s, l = r.topk(H, 1, max_candidates=2000)
    np.testing.assert_array_equal(l[:, 0], brute_topk(H, W0, b, 1)[1][:, 0])
    # a row made much longer than M forces a full rebuild
    big = 100 * (W0[[3]] - W0.mean(0)) + W0.mean(0)
    assert r.update([3], big) == 2000
    q = (W0[3] - W0.mean(0))[None].astype(np.float32)
    assert 3 in r.candidates(q)[1]
    assert len(a[1]) > 0 and len(f[1]) > 0


def test_nbytes_and_repr():
    rng = np.random.default_rng(8)
    W, b = layer(rng, n=1000, d=8)
    r = OutputRetriever(W, b, search="scan", l=64)
    assert r.nbytes >= 1000 * 2048 // 8
    assert not r.owns_weight
    r2 = OutputRetriever(W.astype(np.float64), b)
    assert r2.owns_weight and r2.nbytes > r.nbytes
    t = OutputRetriever(W, b, search="tables")
    assert t.nbytes >= t.tables.nbytes > 0
    assert "OutputRetriever" in repr(t)


def test_dense_and_csr_topk_helpers():
    rng = np.random.default_rng(9)
    H = rng.standard_normal((5, 4)).astype(np.float32)
    W = rng.standard_normal((300, 4)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    s, l = dense_topk(H, W, b, 6, chunk=64)
    np.testing.assert_array_equal(l, brute_topk(H, W, b, 6)[1])
    indptr = np.array([0, 3, 7])
    ids = np.array([4, 1, 9, 2, 8, 3, 0])
    sc = np.array([1, 5, 3, 2, 2, 7, 1], np.float32)
    s, l = csr_topk(indptr, ids, sc, 2)
    np.testing.assert_array_equal(l, [[1, 9], [3, 2]])  # tie 2.0: lower id first


def test_custom_hasher():
    from hashlab.simhash import SimHash
    rng = np.random.default_rng(10)
    W, b = layer(rng, n=800, d=10)
    H, y = planted_queries(rng, W, 50, noise=0.2)
    h = SimHash(12, 4, 30, kind="gaussian", seed=3)
    r = OutputRetriever(W, b, hasher=h, search="tables", target_fraction=0.05)
    assert r.hasher is h and r.k == 4 and r.l == 30
    assert r.recall_report(H, y)["top_logit_recall"] > 0.5  # a random 5% would find ~0.05
    with pytest.raises(ValueError):
        OutputRetriever(W, b, hasher=SimHash(11, 8, 20))  # wrong hash_dim
    with pytest.raises(ValueError):
        OutputRetriever(W, b, hasher=h, k=3)


@pytest.mark.parametrize("make, err", [
    (lambda W, b: OutputRetriever(W[:, :0]), ValueError),
    (lambda W, b: OutputRetriever(W[:0]), ValueError),
    (lambda W, b: OutputRetriever(np.where(np.arange(W.size).reshape(W.shape) == 7, np.nan, W)), ValueError),
    (lambda W, b: OutputRetriever(W, b[:-1]), ValueError),
    (lambda W, b: OutputRetriever(W, np.full_like(b, np.inf)), ValueError),
    (lambda W, b: OutputRetriever(W.astype(np.int32)), TypeError),
    (lambda W, b: OutputRetriever(W.tolist().__iter__()), TypeError),
    (lambda W, b: OutputRetriever(W, b.astype(np.int64)), TypeError),
    (lambda W, b: OutputRetriever(W, target_fraction=0.0), ValueError),
    (lambda W, b: OutputRetriever(W, target_fraction="x"), TypeError),
    (lambda W, b: OutputRetriever(W, search="faiss"), ValueError),
    (lambda W, b: OutputRetriever(W, queries=np.ones((5, 3), np.float32)), ValueError),
    (lambda W, b: OutputRetriever(W).topk(np.ones((2, 5), np.float32)), ValueError),
    (lambda W, b: OutputRetriever(W).topk(np.full((2, 6), np.nan, np.float32)), ValueError),
    (lambda W, b: OutputRetriever(W).topk(np.ones((2, 6), np.int64)), TypeError),
    (lambda W, b: OutputRetriever(W).topk(np.ones((2, 6), np.float32), k=0), ValueError),
    (lambda W, b: OutputRetriever(W).candidates(np.ones((2, 7), np.float32)), ValueError),
    (lambda W, b: OutputRetriever(W).update([0], np.ones((1, 5), np.float32)), ValueError),
    (lambda W, b: OutputRetriever(W).update([50], np.ones((1, 6), np.float32)), ValueError),
    (lambda W, b: OutputRetriever(W).update([0, 1], np.ones((1, 6), np.float32)), ValueError),
    (lambda W, b: OutputRetriever(W).update([0], np.ones((1, 6), np.float32), np.ones(1, np.float32)), ValueError),
    (lambda W, b: OutputRetriever(W).recall_report(np.ones((2, 6), np.float32), [1]), ValueError),
    (lambda W, b: OutputRetriever(W).recall_report(np.ones((2, 6), np.float32), np.array([1, 99])), ValueError),
])
def test_bad_input(make, err):
    rng = np.random.default_rng(11)
    W, b = layer(rng, n=40, d=6)
    with pytest.raises(err):
        make(W, b)


# -- torch head -----------------------------------------------------------------------------
def test_lsh_output_head_logits_and_topk():
    torch = pytest.importorskip("torch")
    from hashlab.torch import LSHOutputHead
    rng = np.random.default_rng(12)
    W, b = layer(rng, n=1500, d=16)
    lin = torch.nn.Linear(16, 1500)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
    head = LSHOutputHead(lin, target_fraction=0.05)
    H, _ = planted_queries(rng, W, 12)
    x = torch.from_numpy(H).reshape(3, 4, 16)
    out = head(x)
    assert out.shape == (3, 4, 1500) and out.dtype == torch.float32
    dense = lin(x).detach()
    finite = torch.isfinite(out)
    assert (finite.sum(-1) == head.retriever.max_candidates).all()
    exact = torch.from_numpy(H.astype(np.float64) @ W.T.astype(np.float64) + b).reshape(3, 4, 1500)
    bound = torch.from_numpy(score_bound(H, W, b)).reshape(3, 4, 1500)
    assert_within(out[finite].numpy(), exact[finite].numpy(), bound[finite].numpy(), "head logits")
    indptr, ids, _ = head.retriever.candidates(H)
    for i in range(12):
        got = torch.nonzero(finite.reshape(12, -1)[i]).ravel().numpy()
        np.testing.assert_array_equal(got, np.sort(ids[indptr[i]:indptr[i + 1]]))
    v, idx = head.topk(x, 3)
    assert v.shape == idx.shape == (3, 4, 3)
    assert torch.equal(v, out.topk(3, dim=-1).values)  # the same kernel's scores of the same candidates
    full = LSHOutputHead(lin, max_candidates=1500)
    assert torch.equal(full(x).argmax(-1), dense.argmax(-1))
    with pytest.raises(ValueError):
        head(torch.ones(2, 15))
    with pytest.raises(TypeError):
        head(np.ones((2, 16), np.float32))
    with pytest.raises(TypeError):
        LSHOutputHead(torch.nn.Conv1d(2, 2, 1))


def test_install_on_a_transformers_model_generates_like_dense():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from hashlab.torch import LSHOutputHead, install_lsh_head, remove_lsh_head
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    prompt = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=6, do_sample=False)
    lin = model.get_output_embeddings()
    head = install_lsh_head(model, calibration=torch.randint(0, 300, (2, 20)), max_candidates=300)
    assert isinstance(model.get_output_embeddings(), LSHOutputHead) and head.linear is lin
    assert head.retriever.nu is not None  # calibrated on the recorded hidden states
    with torch.no_grad():
        got = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, ref)  # every class a candidate: identical greedy decoding
    with pytest.raises(ValueError):
        install_lsh_head(model)
    assert remove_lsh_head(model) is lin and model.get_output_embeddings() is lin


def test_sparse_mlp_lsh_mode_uses_and_refreshes_the_retriever():
    from hashlab.datasets import make_xmc
    from hashlab.slide import SparseMLP
    Xtr, Ytr, Xte, Yte = make_xmc(1500, 200, n_features=500, n_labels=300, seed=0)
    m = SparseMLP(500, 300, hidden=(16,), target_active=40, seed=0)
    m.fit(Xtr, Ytr, epochs=1, batch_size=128, verbose=False)
    s, l = m.predict_topk(Xte, 3, mode="lsh")
    first = m._retriever[1]
    assert isinstance(first, OutputRetriever) and first.weight is m.out_w.w
    m.predict_topk(Xte[:5], 3, mode="lsh")
    assert m._retriever[1] is first  # cached while the weights do not change
    ds, dl = m.predict_topk(Xte, 3, mode="dense")
    assert (l[:, 0] == dl[:, 0]).mean() > 0.3  # quality: tests/test_slide.py (P@1 ratio)
    m.fit(Xtr[:256], Ytr[:256], epochs=1, batch_size=128, verbose=False)
    m.predict_topk(Xte[:5], 3, mode="lsh")
    assert m._retriever[1] is not first and m._retriever[0] == m.step
