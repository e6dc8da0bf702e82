"""LSH tables against an independent Python model of the same structure.

The model (RefTables) is a dict of lists per table written from the specification:
fifo buckets keep arrival order and evict the oldest; reservoir buckets run Vitter's
algorithm R with the documented per-table splitmix64 generator. Queries are compared
exactly: the ids, their collision counts and their order. The tests under concurrent use are
in test_tables_concurrent.py.
"""
import numpy as np
import pytest
import scipy.stats

from hashlab import _C
from hashlab.hashing import Hasher
from hashlab.tables import LSHTables

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


# ---------------------------------------------------------------------------
# reference model
def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class _SplitMix:
    def __init__(self, seed, t):
        self.state = _mix64((seed + GAMMA * (t + 1)) & M64)

    def next(self):
        self.state = (self.state + GAMMA) & M64
        return _mix64(self.state)


class RefTables:
    """Plain-Python LSH tables: bucket -> list of ids in bucket order."""

    def __init__(self, l, key_bits, range_bits, capacity, policy, seed=0):
        self.l, self.key_bits, self.R, self.cap, self.policy, self.seed = l, key_bits, range_bits, capacity, policy, seed
        self.clear()

    def clear(self):
        self.tables = [dict() for _ in range(self.l)]
        self.arrivals = [dict() for _ in range(self.l)]  # reservoir: present ids mapping to the bucket
        self.rng = [_SplitMix(self.seed, t) for t in range(self.l)]
        self.keys = {}

    def bucket(self, key):
        key = int(key)
        if self.key_bits > self.R:
            return ((key * 0x9E3779B1) & 0xFFFFFFFF) >> (32 - self.R)
        return key

    def insert(self, ids, keys):
        for i, row in zip(ids, keys):
            assert int(i) not in self.keys
            self.keys[int(i)] = [self.bucket(k) for k in row]
        for t in range(self.l):
            for i in ids:
                i = int(i)
                b = self.keys[i][t]
                lst = self.tables[t].setdefault(b, [])
                if self.policy == "fifo":
                    lst.append(i)
                    if len(lst) > self.cap:
                        lst.pop(0)
                else:
                    n = self.arrivals[t].get(b, 0) + 1
                    self.arrivals[t][b] = n
                    if len(lst) < self.cap:
                        lst.append(i)
                    else:
                        j = (self.rng[t].next() * n) >> 64
                        if j < self.cap:
                            lst[j] = i

    def remove(self, ids):
        removed = 0
        for i in ids:
            i = int(i)
            if i not in self.keys:
                continue
            removed += 1
            for t, b in enumerate(self.keys.pop(i)):
                if self.policy == "reservoir":
                    self.arrivals[t][b] -= 1
                lst = self.tables[t].get(b, [])
                if i in lst:
                    lst.remove(i)
        return removed

    def query(self, keys, min_collisions=1, max_candidates=None):
        indptr, out_ids, out_counts = [0], [], []
        for row in keys:
            counts = {}  # dicts keep first-discovery order
            for t in range(self.l):
                for i in self.tables[t].get(self.bucket(row[t]), []):
                    counts[i] = counts.get(i, 0) + 1
            cand = [(i, c) for i, c in counts.items() if c >= min_collisions]
            cand.sort(key=lambda ic: -ic[1])  # stable: ties stay in discovery order
            if max_candidates is not None:
                cand = cand[:max_candidates]
            out_ids += [i for i, _ in cand]
            out_counts += [c for _, c in cand]
            indptr.append(len(out_ids))
        return np.array(indptr, np.int64), np.array(out_ids, np.int32), np.array(out_counts, np.int32)

    def sizes(self):
        hist = np.zeros(self.cap + 1, np.int64)
        for t in range(self.l):
            for lst in self.tables[t].values():
                hist[len(lst)] += 1
        hist[0] = self.l * 2 ** self.R - hist[1:].sum()
        return hist


def assert_same_result(got, want):
    for g, w, name in zip(got, want, ("indptr", "ids", "counts")):
        assert g.dtype == w.dtype, name
        np.testing.assert_array_equal(g, w, err_msg=name)


class KeyHasher(Hasher):
    """Test hasher: row x of X (n, l) floats hashes to the keys floor(x) (as uint32)."""

    def __init__(self, l, key_bits):
        self.dim, self.k, self.l, self.seed, self.key_bits = l, key_bits, l, 0, key_bits
        self.table = np.zeros(3, np.float32)  # so that nbytes is non-zero

    def _keys_dense(self, X, keys):
        keys[:] = X.astype(np.uint32)

    def _keys_csr(self, indptr, indices, data, n, keys):
        raise NotImplementedError

    def _ctor_args(self):
        return dict(l=self.l, key_bits=self.key_bits)


def _random_ops(rng, model, index, key_bits, n_steps, batch, id_base, check):
    """Random inserts and removals applied to both; check() after every step."""
    next_id = 0
    present = []
    for _ in range(n_steps):
        if present and rng.random() < 0.3:
            pick = rng.choice(present, size=min(len(present), rng.integers(1, batch)), replace=False)
            extra = [id_base + next_id + 50_000]  # absent ids are ignored
            ids = np.concatenate([pick, extra, pick[:1]])  # a repeated id is removed once
            assert index.remove(ids) == model.remove(ids)
            present = [p for p in present if p not in set(pick.tolist())]
        else:
            m = int(rng.integers(0, batch + 1))
            ids = id_base + next_id + np.arange(m)
            next_id += m
            ids = rng.permutation(ids)
            keys = rng.integers(0, 2 ** key_bits, size=(m, model.l), dtype=np.uint32)
            index.insert_keys(ids, keys)
            model.insert(ids, keys)
            present += ids.tolist()
        assert len(index) == len(model.keys)
        check()
    return present


# ---------------------------------------------------------------------------
# exact agreement with the model
@pytest.mark.parametrize("policy", ["fifo", "reservoir"])
@pytest.mark.parametrize("l, key_bits, range_bits, capacity", [
    (1, 5, 5, 3),       # one table: a query returns exactly one bucket, in bucket order
    (4, 6, 6, 3),       # keys index buckets directly
    (5, 12, 4, 4),      # keys folded to 16 buckets
    (3, 32, 3, 1),      # full 32-bit keys, capacity 1
    (7, 4, 4, 200),     # nothing ever full
])
@pytest.mark.parametrize("id_base", [0, 2**31 - 400_000])  # dense and hashed collision counters
def test_matches_reference(policy, l, key_bits, range_bits, capacity, id_base):
    rng = np.random.default_rng(hash((policy, l, key_bits, range_bits, capacity, id_base)) % 2**32)
    seed = int(rng.integers(0, 2**63))
    index = LSHTables.for_keys(l, key_bits, bucket_capacity=capacity, policy=policy,
                               range_bits=range_bits, seed=seed)
    model = RefTables(l, key_bits, range_bits, capacity, policy, seed)
    q = rng.integers(0, 2 ** key_bits, size=(40, l), dtype=np.uint32)

    def check():
        for min_c in sorted({1, 2, l}):
            if min_c > l:
                continue
            for cap in (None, 1, 5):
                assert_same_result(index.query_keys(q, min_c, cap), model.query(q, min_c, cap))
        st = index.stats()
        np.testing.assert_array_equal(st["occupancy_histogram"], model.sizes())
        assert st["stored"] == sum(len(v) for tb in model.tables for v in tb.values())
        assert st["dropped"] == l * len(model.keys) - st["stored"]

    _random_ops(rng, model, index, key_bits, 25, 30, id_base, check)
    # each present id queried with its own keys: found wherever the model still stores it
    if model.keys and model.key_bits <= model.R:  # unfolded: the model's buckets are the keys
        own = np.array(list(model.keys.values()), np.uint32).reshape(-1, l)
        assert_same_result(index.query_keys(own), model.query(own))
    index.freeze()
    assert index.frozen
    check()
    index.thaw()
    check()
    # after thaw the tables keep evolving exactly like the model (reservoir counts recounted)
    _random_ops(rng, model, index, key_bits, 8, 30, id_base + 10**5, check)


def test_fifo_eviction_order_one_bucket():
    t = LSHTables.for_keys(1, 4, bucket_capacity=3)
    for i in range(6):
        t.insert_keys([i], np.array([[7]], np.uint32))
    indptr, ids, counts = t.query_keys(np.array([[7], [6]], np.uint32))
    np.testing.assert_array_equal(indptr, [0, 3, 3])
    np.testing.assert_array_equal(ids, [3, 4, 5])  # oldest first, 0..2 evicted
    np.testing.assert_array_equal(counts, [1, 1, 1])
    t.remove([4])
    t.insert_keys([9, 10], np.array([[7], [7]], np.uint32))
    np.testing.assert_array_equal(t.query_keys(np.array([[7]], np.uint32))[1], [5, 9, 10])
    assert len(t) == 7  # evicted ids still count
    st = t.stats()
    assert st["dropped"] == 7 - 3 and st["stored"] == 3 and st["full_fraction"] == 1 / 16


def test_order_by_count_then_discovery():
    # id 1 collides in 3 tables, 2 and 3 in 2, 4 in 1; ties keep table/bucket order
    t = LSHTables.for_keys(3, 8)
    keys = np.array([[5, 5, 5],    # id 1
                     [9, 5, 5],    # id 2
                     [5, 5, 9],    # id 3
                     [9, 9, 5]],   # id 4
                    np.uint32)
    t.insert_keys([1, 2, 3, 4], keys)
    indptr, ids, counts = t.query_keys(np.array([[5, 5, 5]], np.uint32))
    np.testing.assert_array_equal(ids, [1, 3, 2, 4])  # 3 is found in table 0 before 2
    np.testing.assert_array_equal(counts, [3, 2, 2, 1])
    _, ids, counts = t.query_keys(np.array([[5, 5, 5]], np.uint32), min_collisions=2, max_candidates=2)
    np.testing.assert_array_equal(ids, [1, 3])
    _, ids, _ = t.query_keys(np.array([[5, 5, 5]], np.uint32), min_collisions=3)
    np.testing.assert_array_equal(ids, [1])


def test_large_l_counting_sort_and_empty():
    # l larger than the candidates (stable-sort path) and many candidates (counting sort)
    rng = np.random.default_rng(3)
    for l, n in ((300, 5), (300, 3000)):
        t = LSHTables.for_keys(l, 2, bucket_capacity=65535)
        m = RefTables(l, 2, 2, 65535, "fifo")
        keys = rng.integers(0, 4, size=(n, l), dtype=np.uint32)
        t.insert_keys(np.arange(n), keys)
        m.insert(np.arange(n), keys)
        q = rng.integers(0, 4, size=(3, l), dtype=np.uint32)
        for min_c in (1, 70, 150, l):
            assert_same_result(t.query_keys(q, min_c), m.query(q, min_c))
    empty = LSHTables.for_keys(4, 8)
    indptr, ids, counts = empty.query_keys(np.zeros((3, 4), np.uint32))
    np.testing.assert_array_equal(indptr, [0, 0, 0, 0])
    assert ids.dtype == np.int32 and counts.dtype == np.int32 and indptr.dtype == np.int64
    indptr, ids, counts = empty.query_keys(np.zeros((0, 4), np.uint32))
    np.testing.assert_array_equal(indptr, [0])


def test_deterministic_across_thread_counts(threads):
    rng = np.random.default_rng(7)
    n, l = 20000, 12
    keys = rng.integers(0, 2**9, size=(n, l), dtype=np.uint32)
    q = rng.integers(0, 2**9, size=(500, l), dtype=np.uint32)
    results = []
    for nt in (1, 2, 4):
        threads(nt)
        t = LSHTables.for_keys(l, 9, bucket_capacity=16, policy="reservoir", seed=5)
        for s in range(0, n, 5000):
            t.insert_keys(np.arange(s, s + 5000), keys[s:s + 5000])
        t.remove(np.arange(0, n, 7))
        results.append(t.query_keys(q, 1, 50))
        t.freeze()
        assert_same_result(t.query_keys(q, 1, 50), results[-1])
    for r in results[1:]:
        assert_same_result(r, results[0])


# ---------------------------------------------------------------------------
# reservoir sampling is uniform over arrivals
def _reservoir_inclusions(policy, n_ids, capacity, trials):
    kept = np.zeros(n_ids, np.int64)
    keys = np.zeros((n_ids, 1), np.uint32)
    for seed in range(trials):
        t = LSHTables.for_keys(1, 1, bucket_capacity=capacity, policy=policy, seed=seed)
        for s in range(0, n_ids, 7):  # several batches: the generator advances across them
            t.insert_keys(np.arange(s, min(s + 7, n_ids)), keys[s:s + 7])
        _, ids, _ = t.query_keys(np.zeros((1, 1), np.uint32))
        assert ids.size == capacity and np.unique(ids).size == capacity
        kept[ids] += 1
    return kept


def _uniform_subset_pvalue(kept, n_ids, capacity, trials):
    """Chi-square test that each trial keeps a uniform random subset of `capacity` ids.

    Per trial the inclusion indicators have variance p(1-p) and covariance
    -p(1-p)/(N-1) (p = capacity/N), so sum (O-E)^2 / (T p (1-p)) * (N-1)/N ~ chi2(N-1).
    """
    p = capacity / n_ids
    stat = ((kept - trials * p) ** 2).sum() / (trials * p * (1 - p)) * (n_ids - 1) / n_ids
    return scipy.stats.chi2.sf(stat, n_ids - 1)


def test_reservoir_uniform_chi_square():
    n_ids, capacity, trials = 60, 8, 1500
    kept = _reservoir_inclusions("reservoir", n_ids, capacity, trials)
    assert _uniform_subset_pvalue(kept, n_ids, capacity, trials) > 1e-3
    # early and late arrivals are kept equally often (the property SLIDE's variant lacks)
    first, last = kept[: n_ids // 2].sum(), kept[n_ids // 2:].sum()
    total = trials * capacity
    assert abs(first - last) < 4 * np.sqrt(total)  # |Binomial(total, 1/2) difference| bound
    # the test has power: fifo keeps the last arrivals only
    kept_fifo = _reservoir_inclusions("fifo", n_ids, capacity, 50)
    assert _uniform_subset_pvalue(kept_fifo, n_ids, capacity, 50) < 1e-6


def test_reservoir_seed_and_rebuild_determinism():
    keys = np.zeros((100, 2), np.uint32)
    a = LSHTables.for_keys(2, 3, bucket_capacity=5, policy="reservoir", seed=1)
    b = LSHTables.for_keys(2, 3, bucket_capacity=5, policy="reservoir", seed=2)
    a.insert_keys(np.arange(100), keys)
    b.insert_keys(np.arange(100), keys)
    qa = a.query_keys(keys[:1])
    assert not np.array_equal(qa[1], b.query_keys(keys[:1])[1])
    a.clear()  # the generators restart: the same inserts give the same sample
    a.insert_keys(np.arange(100), keys)
    assert_same_result(a.query_keys(keys[:1]), qa)


# ---------------------------------------------------------------------------
# freeze / thaw, remove, state errors
def test_freeze_thaw_and_state_errors():
    rng = np.random.default_rng(5)
    l, kb = 6, 14
    t = LSHTables.for_keys(l, kb, bucket_capacity=4, range_bits=8)
    keys = rng.integers(0, 2**kb, size=(3000, l), dtype=np.uint32)
    t.insert_keys(np.arange(3000), keys)
    t.remove(np.arange(0, 3000, 3))
    q = keys[::7]
    before = t.query_keys(q, 1, None)
    st_before = t.stats()
    nb_dynamic = t.nbytes
    t.freeze()
    t.freeze()  # no-op
    assert t.frozen and "frozen" in repr(t)
    assert_same_result(t.query_keys(q), before)
    assert_same_result(t.query_keys(q, 2, 3), t.query_keys(q, 2, 3))
    st = t.stats()
    for k in ("stored", "dropped", "max_bucket_size"):
        assert st[k] == st_before[k]
    np.testing.assert_array_equal(st["occupancy_histogram"], st_before["occupancy_histogram"])
    assert t.nbytes < nb_dynamic
    for call in (lambda: t.insert_keys([5000], keys[:1]), lambda: t.remove([1]),
                 lambda: t.rebuild([1], np.zeros((1, l), np.float32))):
        with pytest.raises(RuntimeError, match="frozen"):
            call()
    assert len(t) == 2000  # nothing changed by the failed calls
    t.thaw()
    t.thaw()  # no-op
    assert not t.frozen
    assert_same_result(t.query_keys(q), before)
    t.insert_keys([5000], keys[:1])
    assert len(t) == 2001
    t.freeze()
    t.clear()  # clearing keeps the frozen state
    assert t.frozen and len(t) == 0
    assert t.query_keys(q)[1].size == 0
    t.thaw()
    t.insert_keys([1], keys[:1])
    assert len(t) == 1


def test_remove_semantics():
    t = LSHTables.for_keys(3, 8, bucket_capacity=10)
    keys = np.arange(30, dtype=np.uint32).reshape(10, 3)
    t.insert_keys(np.arange(10), keys)
    assert t.remove([3, 3, 99, 4]) == 2
    assert t.remove([]) == 0
    assert len(t) == 8
    indptr, ids, _ = t.query_keys(keys)
    assert 3 not in ids and 4 not in ids
    t.insert_keys([3], keys[3:4])  # a removed id can come back
    assert t.query_keys(keys[3:4])[1].tolist() == [3]
    assert t.remove(np.arange(10)) == 9
    assert len(t) == 0 and t.stats()["stored"] == 0


def test_insert_rejects_present_and_duplicate_ids_atomically():
    t = LSHTables.for_keys(2, 8)
    t.insert_keys([1, 2], np.zeros((2, 2), np.uint32))
    with pytest.raises(ValueError, match="id 2"):
        t.insert_keys([5, 2, 6], np.zeros((3, 2), np.uint32))
    with pytest.raises(ValueError, match="duplicate|unique"):
        t.insert_keys([7, 7], np.zeros((2, 2), np.uint32))
    with pytest.raises(ValueError, match="duplicate"):  # the core checks too
        t._core.insert(np.array([8, 8], np.int32), np.zeros((2, 2), np.uint32))
    assert len(t) == 2 and t.stats()["stored"] == 4  # nothing of the failed batches went in


# ---------------------------------------------------------------------------
# stats and memory
def test_stats_fields():
    t = LSHTables.for_keys(2, 3, bucket_capacity=2)  # 8 buckets per table
    t.insert_keys(np.arange(5), np.array([[0, 1], [0, 1], [0, 2], [1, 2], [1, 3]], np.uint32))
    st = t.stats()
    # table 0: bucket 0 has 3 arrivals (2 kept), bucket 1 has 2; table 1: 2, 2, 1
    np.testing.assert_array_equal(st["occupancy_histogram"], [16 - 5, 1, 4])
    assert st["buckets"] == 16
    assert st["stored"] == 9 and st["dropped"] == 1
    assert st["full_fraction"] == 4 / 16 and st["nonempty_fraction"] == 5 / 16
    assert st["mean_bucket_size"] == 9 / 5 and st["max_bucket_size"] == 2
    e = LSHTables.for_keys(2, 3).stats()
    assert e["mean_bucket_size"] == 0.0 and e["max_bucket_size"] == 0 and e["stored"] == 0


def test_nbytes_grows_sensibly():
    l, R = 10, 16
    t = LSHTables(KeyHasher(l, R), bucket_capacity=64)
    empty = t.nbytes
    assert empty >= l * 2**R * 8  # 8-byte bucket headers
    assert empty < l * 2**R * 8 * 1.1 + (1 << 20)
    assert t.nbytes - t._core.nbytes() == t.hasher.nbytes > 0
    rng = np.random.default_rng(0)
    sizes = [empty]
    for n in (10_000, 20_000, 40_000):
        t.insert_keys(np.arange(sizes.__len__() * 10**6, sizes.__len__() * 10**6 + n),
                      rng.integers(0, 2**R, size=(n, l), dtype=np.uint32))
        sizes.append(t.nbytes)
    total = len(t)
    per_id = (sizes[-1] - empty) / total
    # each id: 4 bytes per table stored + its 4*l bucket indices + map; blocks grow 2x at most
    assert 8 * l <= per_id <= 8 * l * 2.5 + 64
    assert sizes[1] < sizes[2] < sizes[3]
    t.freeze()
    frozen = t.nbytes
    assert frozen < sizes[-1]
    t.thaw()
    t.clear()
    assert t.nbytes <= empty * 1.05 + (1 << 16)


# ---------------------------------------------------------------------------
# the hasher-facing API
def test_insert_query_with_hasher_and_inputs():
    l = 4
    h = KeyHasher(l, 6)
    t = LSHTables(h, bucket_capacity=8, range_bits=6)
    assert t.range_bits == 6
    X = np.random.default_rng(1).integers(0, 64, size=(50, l)).astype(np.float32)
    t.insert(list(range(50)), X)
    got = t.query(X[:5], min_collisions=l)
    want = t.query_keys(X[:5].astype(np.uint32), min_collisions=l)
    assert_same_result(got, want)
    for i in range(5):
        assert i in got[1][got[0][i]:got[0][i + 1]]
    single = t.query(X[3])  # a 1-D row is one query
    assert single[0].shape == (2,)
    t.rebuild(np.arange(100, 150, dtype=np.int64), X)
    assert len(t) == 50 and t.query(X[:1], min_collisions=l)[1][0] >= 100
    torch = pytest.importorskip("torch")
    t2 = LSHTables(h, bucket_capacity=8)
    t2.insert(torch.arange(50), torch.from_numpy(X))
    assert_same_result(t2.query(torch.from_numpy(X[:5])), t2.query(X[:5]))
    assert t2.remove(torch.tensor([1, 2])) == 2
    t2.insert_keys(torch.tensor([1]), torch.from_numpy(X[1:2].astype(np.int64)))
    assert len(t2) == 49


def test_default_range_bits_and_repr():
    assert LSHTables(KeyHasher(2, 32)).range_bits == 20
    assert LSHTables(KeyHasher(2, 9)).range_bits == 9
    t = LSHTables.for_keys(3, 12, policy="reservoir")
    assert "reservoir" in repr(t) and t.l == 3 and t.key_bits == 12
    with pytest.raises(TypeError, match="for_keys"):
        t.insert([1], np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="for_keys"):
        t.query(np.zeros((1, 3), np.float32))


# ---------------------------------------------------------------------------
# bad input
def _bad_ctor_cases():
    h = KeyHasher(3, 16)
    return [
        (TypeError, lambda: LSHTables(object())),
        (TypeError, lambda: LSHTables(h, bucket_capacity=2.0)),
        (ValueError, lambda: LSHTables(h, bucket_capacity=0)),
        (ValueError, lambda: LSHTables(h, bucket_capacity=65536)),
        (TypeError, lambda: LSHTables(h, policy=1)),
        (ValueError, lambda: LSHTables(h, policy="lru")),
        (ValueError, lambda: LSHTables(h, range_bits=0)),
        (ValueError, lambda: LSHTables(h, range_bits=17)),  # > key_bits
        (ValueError, lambda: LSHTables(KeyHasher(3, 32), range_bits=29)),  # > 28
        (TypeError, lambda: LSHTables(h, range_bits=True)),
        (ValueError, lambda: LSHTables(h, seed=-1)),
        (ValueError, lambda: LSHTables.for_keys(0, 8)),
        (ValueError, lambda: LSHTables.for_keys(2, 33)),
        (ValueError, lambda: _C.LSHTables(2, 8, 9, 4, "fifo", 0)),  # the core checks too
        (ValueError, lambda: _C.LSHTables(2, 8, 8, 4, "lru", 0)),
    ]


@pytest.mark.parametrize("case", range(len(_bad_ctor_cases())))
def test_bad_constructor_arguments(case):
    err, call = _bad_ctor_cases()[case]
    with pytest.raises(err):
        call()


def _bad_call_cases(t):
    z = np.zeros((2, 3), np.uint32)
    return [
        (TypeError, lambda: t.insert_keys(np.array([1.0, 2.0]), z)),
        (TypeError, lambda: t.insert_keys("ab", z)),
        (ValueError, lambda: t.insert_keys(np.array([[1, 2]]), z)),
        (ValueError, lambda: t.insert_keys([-1, 2], z)),
        (ValueError, lambda: t.insert_keys([1, 2, 3], z)),       # n mismatch
        (ValueError, lambda: t.insert_keys([1, 1], z)),          # duplicate
        (ValueError, lambda: t.insert_keys([0, 5], z)),          # 0 present
        (ValueError, lambda: t.insert_keys([2**31 - 1, 5], z)),  # beyond int32 ids
        (TypeError, lambda: t.insert_keys([1, 2], z.astype(np.float32))),
        (TypeError, lambda: t.insert_keys([1, 2], z.tolist())),
        (ValueError, lambda: t.insert_keys([1, 2], np.zeros((2, 4), np.uint32))),
        (ValueError, lambda: t.insert_keys([1, 2], np.zeros(6, np.uint32))),
        (ValueError, lambda: t.insert_keys([1, 2], np.full((2, 3), 2**16, np.uint32))),  # >= 2^key_bits
        (ValueError, lambda: t.insert_keys([1, 2], np.full((2, 3), -1, np.int64))),
        (ValueError, lambda: t.insert_keys([1, 2], np.full((2, 3), 2**40, np.uint64))),
        (ValueError, lambda: t.query_keys(z, min_collisions=0)),
        (ValueError, lambda: t.query_keys(z, min_collisions=4)),
        (TypeError, lambda: t.query_keys(z, min_collisions=1.0)),
        (TypeError, lambda: t.query_keys(z, min_collisions=True)),
        (ValueError, lambda: t.query_keys(z, max_candidates=0)),
        (TypeError, lambda: t.query_keys(z, max_candidates="3")),
        (ValueError, lambda: t.query_keys(np.full((2, 3), 2**16, np.uint32))),
        (ValueError, lambda: t.query_keys(np.zeros((2, 2), np.uint32))),
        (TypeError, lambda: t.query_keys(np.zeros((2, 3), np.float64))),
        (ValueError, lambda: t.remove([-3])),
        (TypeError, lambda: t.remove([0.5])),
        (ValueError, lambda: t.remove(np.zeros((2, 2), np.int64))),
        (TypeError, lambda: t.insert([1, 2], np.zeros((2, 3), np.int32))),  # hasher wants floats
        (ValueError, lambda: t.insert([1, 2], np.zeros((2, 5), np.float32))),
        (ValueError, lambda: t.insert([1, 2], np.full((2, 3), np.nan, np.float32))),
        (ValueError, lambda: t._core.query(z, 0, 0)),            # raw core: min_collisions
        (TypeError, lambda: t._core.insert(np.array([1, 2], np.int64), z)),
        (ValueError, lambda: t._core.insert(np.array([1, 2], np.int32), z[:, :2].copy())),  # l
        (ValueError, lambda: t._core.query(z[:, :2].copy(), 1, 0)),
        (ValueError, lambda: t._core.insert(np.array([-1, 2], np.int32), z)),
    ]


@pytest.mark.parametrize("case", range(35))
def test_bad_call_arguments(case):
    t = LSHTables(KeyHasher(3, 16), bucket_capacity=4)
    t.insert_keys([0], np.zeros((1, 3), np.uint32))
    cases = _bad_call_cases(t)
    assert len(cases) == 35
    err, call = cases[case]
    with pytest.raises(err):
        call()
    assert len(t) == 1 and t.stats()["stored"] == 3  # a rejected call changes nothing


def test_fuzz_inputs_never_crash():
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    t = LSHTables.for_keys(3, 10, bucket_capacity=4)
    dtypes = [np.int8, np.int32, np.int64, np.uint32, np.uint64, np.float32, np.bool_]

    @hyp.settings(max_examples=300, deadline=None, derandomize=True)
    @hyp.given(n=st.integers(0, 5), cols=st.integers(0, 4), kd=st.sampled_from(dtypes),
               idd=st.sampled_from(dtypes), lo=st.integers(-3, 2**11), ndim=st.integers(1, 3),
               op=st.sampled_from(["insert", "query", "remove"]))
    def fuzz(n, cols, kd, idd, lo, ndim, op):
        rng = np.random.default_rng(n * 7 + cols)
        shape = (n, cols) if ndim == 2 else ((n * cols,) if ndim == 1 else (n, cols, 1))
        keys = (rng.integers(0, 4, size=shape) + lo).astype(kd)
        ids = (np.arange(n) + lo).astype(idd)
        try:
            if op == "insert":
                t.insert_keys(ids, keys)
            elif op == "query":
                indptr, out, counts = t.query_keys(keys, min_collisions=1)
                assert indptr.shape == (keys.shape[0] + 1,)
            else:
                t.remove(ids)
        except (TypeError, ValueError):
            pass

    fuzz()
    assert t.stats()["dropped"] == 3 * len(t) - t.stats()["stored"]


# ---------------------------------------------------------------------------
# recall against the (k, l) theory with a real hasher
def test_simhash_recall_matches_theory():
    simhash = pytest.importorskip("hashlab.simhash")
    rng = np.random.default_rng(2024)
    dim, n, nq, top, k, l = 24, 4000, 300, 10, 7, 8
    centers = rng.standard_normal((40, dim))
    X = (centers[rng.integers(0, 40, n)] + 0.9 * rng.standard_normal((n, dim))).astype(np.float32)
    Q = (centers[rng.integers(0, 40, nq)] + 0.9 * rng.standard_normal((nq, dim))).astype(np.float32)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    cos = Qn @ Xn.T
    nbr = np.argsort(-cos, axis=1)[:, :top]
    theta = np.arccos(np.clip(np.take_along_axis(cos, nbr, axis=1), -1, 1))
    p_key = (1 - theta / np.pi) ** k                 # one table: all k bits agree
    predicted = 1 - (1 - p_key) ** l                 # >= 1 of l tables
    dev, count_dev = [], []
    for seed in range(4):                            # independent hash functions
        h = simhash.SimHash(dim, k, l, kind="gaussian", seed=seed)
        t = LSHTables(h, bucket_capacity=n)          # never full: the theory applies exactly
        t.insert(np.arange(n), X)
        assert t.stats()["dropped"] == 0 and t.range_bits == k  # no folding either
        indptr, ids, counts = t.query(Q)
        found = np.zeros((nq, top), bool)
        cnt = np.zeros((nq, top))
        for i in range(nq):
            c = dict(zip(ids[indptr[i]:indptr[i + 1]].tolist(), counts[indptr[i]:indptr[i + 1]].tolist()))
            found[i] = [j in c for j in nbr[i]]
            cnt[i] = [c.get(j, 0) for j in nbr[i]]
        dev.append(found.mean(axis=1) - predicted.mean(axis=1))   # per-query recall error
        count_dev.append(cnt.mean(axis=1) - (l * p_key).mean(axis=1))
    # Error of the mean recall: queries are the units (the 10 neighbours of one query are
    # correlated); queries of one seed share the hash functions, so the spread of the
    # per-seed means bounds it too. Take the larger estimate.
    for d in (dev, count_dev):
        flat = np.concatenate(d)
        se_query = flat.std(ddof=1) / np.sqrt(flat.size)
        se_seed = np.std([x.mean() for x in d], ddof=1) / np.sqrt(len(d))
        z = flat.mean() / max(se_query, se_seed)
        assert abs(z) < 4, (flat.mean(), se_query, se_seed)
    assert 0.2 < predicted.mean() < 0.9, predicted.mean()  # an informative regime
