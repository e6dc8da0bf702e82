"""LSHTables under concurrent use: inserts, queries, removals and freeze/thaw from several Python
threads at once (the kernels release the GIL), checked against a serial build."""
import threading

import numpy as np

from hashlab.tables import LSHTables


def test_concurrent_inserts_and_queries(threads):
    threads(2)
    l, key_bits, per_thread, batch, n_threads = 8, 16, 6000, 300, 4
    rng = np.random.default_rng(11)
    all_keys = rng.integers(0, 2**key_bits, size=(n_threads * per_thread, l), dtype=np.uint32)
    index = LSHTables.for_keys(l, key_bits, bucket_capacity=1000, range_bits=12)
    errors = []

    def worker(w):
        try:
            lo = w * per_thread
            for s in range(lo, lo + per_thread, batch):
                index.insert_keys(np.arange(s, s + batch), all_keys[s:s + batch])
                # my ids so far must all be found with their own keys, whatever the others do
                probe = np.arange(lo, s + batch, 97)
                indptr, ids, counts = index.query_keys(all_keys[probe])
                for j, i in enumerate(probe):
                    got = ids[indptr[j]:indptr[j + 1]]
                    assert np.unique(got).size == got.size
                    assert counts[indptr[j]:indptr[j + 1]][got == i].tolist() == [l]
                len(index), index.nbytes, index.stats()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    n = n_threads * per_thread
    assert len(index) == n
    st = index.stats()
    assert st["dropped"] == 0 and st["stored"] == n * l
    indptr, ids, counts = index.query_keys(all_keys)
    for i in range(n):
        got = ids[indptr[i]:indptr[i + 1]]
        assert np.unique(got).size == got.size
        assert counts[indptr[i]:indptr[i + 1]][got == i].tolist() == [l]
    # the same candidate sets (with counts) as a serial build
    serial = LSHTables.for_keys(l, key_bits, bucket_capacity=1000, range_bits=12)
    serial.insert_keys(np.arange(n), all_keys)
    s_indptr, s_ids, s_counts = serial.query_keys(all_keys[::50])
    c_indptr, c_ids, c_counts = index.query_keys(all_keys[::50])
    np.testing.assert_array_equal(s_indptr, c_indptr)
    for j in range(len(s_indptr) - 1):
        a = dict(zip(s_ids[s_indptr[j]:s_indptr[j + 1]].tolist(), s_counts[s_indptr[j]:s_indptr[j + 1]].tolist()))
        b = dict(zip(c_ids[c_indptr[j]:c_indptr[j + 1]].tolist(), c_counts[c_indptr[j]:c_indptr[j + 1]].tolist()))
        assert a == b


def test_concurrent_insert_remove_freeze(threads):
    # writers and a freezer racing: every call either succeeds or raises the frozen error
    threads(2)
    l = 4
    index = LSHTables.for_keys(l, 10, bucket_capacity=64)
    rng = np.random.default_rng(2)
    keys = rng.integers(0, 2**10, size=(8000, l), dtype=np.uint32)
    inserted = [set() for _ in range(3)]
    errors = []

    def writer(w):
        try:
            for s in range(w * 2000, (w + 1) * 2000, 100):
                ids = np.arange(s, s + 100)
                while True:
                    try:
                        index.insert_keys(ids, keys[s:s + 100])
                        break
                    except RuntimeError as e:
                        assert "frozen" in str(e)
                inserted[w].update(ids.tolist())
                while True:
                    try:
                        index.remove(ids[::2])
                        break
                    except RuntimeError as e:
                        assert "frozen" in str(e)
                inserted[w].difference_update(ids[::2].tolist())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def freezer():
        try:
            for _ in range(30):
                index.freeze()
                index.query_keys(keys[:50])
                index.thaw()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(w,)) for w in range(3)] + [threading.Thread(target=freezer)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    present = set().union(*inserted)
    assert len(index) == len(present)
    assert index.stats()["dropped"] == l * len(present) - index.stats()["stored"]
