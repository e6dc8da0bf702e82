"""Label-sharded SLIDE training and output retrieval over torch.distributed (gloo, CPU).

When an output layer outgrows one machine, its labels are split across processes: rank
r of W owns the contiguous labels ``[N * r // W, N * (r + 1) // W)`` (``label_range``):
their weights, Adam moments and its own LSH tables. The hidden layers are replicated
(identical initialisation from the seed) and their gradients summed across ranks.

One training step (``ShardedSparseMLP.train_batch``), with every rank holding its own rows
of the global batch (data parallel below the output layer, model parallel in it):

1. hidden layers on the local rows; all-gather of the last hidden activations and the
   labels, so every rank has the whole batch's H (n, d);
2. each rank picks active neurons in its shard (its labels of each sample, then LSH
   candidates from its tables, then random ones; about ``target_active * shard / N``
   per sample) and computes their logits;
3. all-gather of each sample's local (max, sum of exp, sum of label logits): the softmax
   normaliser is then that of the union of the ranks' active sets;
4. local gradient and lazy Adam on the touched rows of the shard; all-reduce of the
   gradient with respect to H (each rank's partial sum over its own neurons);
5. backward through the hidden layers on the local rows; all-reduce of the dense
   gradients and all-gather of the input layer's sparse row gradients, then identical
   Adam steps on every rank.

The result is the model a single process trains on the union of the active sets: with
all neurons active (``target_active >= output_dim``) it is ``SparseMLP``'s model, to
float rounding (tests/test_distributed.py checks losses and weights).

Data
----
Each rank passes ``fit`` its own rows of the training set (its slice of the file:
``load_xmc_shard`` reads only that byte range; with small in-memory data, pass
``X[shard_rows(n)]``). A global batch of ``batch_size`` rows takes
``batch_size * (r + 1) // W - batch_size * r // W`` rows from rank r's shuffled slice, so
no rank ever holds the whole training set; ranks with fewer rows contribute empty parts
at the end of an epoch. ``predict_topk`` and ``evaluate`` are collective too but take the
same rows on every rank (each scores its labels; the top-k are merged).

Failure handling: every collective runs under the process group's timeout (set it with
``init_process_group(..., timeout=...)``) and barriers are ``monitored_barrier`` with
``timeout`` seconds; a rank that dies or stalls makes the others raise a RuntimeError
naming the step, instead of hanging.

torch is imported only when a process group is used; with ``distributed=False`` (or no
process group initialised) everything runs in one process, e.g. to load a checkpoint
written by several ranks and predict with it.

Modules
-------
``comm`` (collectives and their failure reports), ``sharding`` (label ranges, row
slices, ``load_xmc_shard``), ``retriever`` (``ShardedRetriever``, the top-k merge),
``training`` (``ShardedSparseMLP``), ``checkpoint`` (the on-disk format).
"""
from .checkpoint import FORMAT_VERSION, MANIFEST, _adam_from, _open_npz, _sha256, _write_npz  # noqa: F401
from .comm import _Comm, _group_rank_world  # noqa: F401
from .retriever import ShardedRetriever, _merge_topk  # noqa: F401
from .sharding import label_range, load_xmc_shard, shard_rows
from .training import _B1, _B2, _EPS, ShardedSparseMLP, _active_sets, _first_occurrences  # noqa: F401

__all__ = ["ShardedSparseMLP", "ShardedRetriever", "label_range", "shard_rows", "load_xmc_shard"]
