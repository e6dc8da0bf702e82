"""Train a label-sharded sparse MLP on several processes or machines (torch.distributed, gloo).

One machine, 2 processes:

    torchrun --nproc_per_node=2 examples/distributed_train.py                # synthetic data
    torchrun --nproc_per_node=2 examples/distributed_train.py train.txt test.txt --save ckpt/

Several machines (run on each; node_rank 0 .. nnodes-1, master = node 0's address):

    torchrun --nnodes=4 --node_rank=0 --nproc_per_node=1 \\
             --master_addr=10.0.0.1 --master_port=29500 examples/distributed_train.py train.txt test.txt

Without torchrun it runs as one process. Each rank owns 1/world of the labels (weights, Adam
state, LSH tables); with a training file each rank reads only its byte range of it
(hashlab.distributed.load_xmc_shard; the file must be uncompressed and visible to every
node), the test file is read by every rank. Synthetic data is generated identically on
every rank and sliced. ``--save`` writes one shard file per rank plus a manifest, loadable
on any number of ranks with ShardedSparseMLP.load.
"""
import argparse
import datetime
import os
import sys
import time

import hashlab
from hashlab.datasets import load_xmc, make_xmc
from hashlab.distributed import ShardedSparseMLP, load_xmc_shard, shard_rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", nargs="?", help="uncompressed training file (XMC/libsvm); default: synthetic")
    ap.add_argument("test", nargs="?", help="test file (required with a training file)")
    ap.add_argument("--labels", type=int, default=20_000, help="synthetic: labels (default 20000)")
    ap.add_argument("--features", type=int, default=20_000, help="synthetic: features")
    ap.add_argument("--train-rows", type=int, default=20_000, help="synthetic: training rows")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256, help="global batch (split across ranks)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--target-active", type=int, default=None, help="active output neurons per sample (all ranks)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=None, help="kernel threads per process")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a dead or stalled rank is reported")
    ap.add_argument("--save", help="checkpoint directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.train and not args.test:
        ap.error("a training file needs a test file")
    if args.threads:
        hashlab.set_num_threads(args.threads)

    if "RANK" in os.environ:  # launched by torchrun: it sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    say = print if rank == 0 else (lambda *a, **k: None)

    t0 = time.perf_counter()
    try:
        if args.train:
            Xtr, Ytr = load_xmc_shard(args.train, rank, world)
            Xte, Yte = load_xmc(args.test, n_features=Xtr.shape[1], n_labels=Ytr.shape[1], verbose=False)
        else:
            Xtr, Ytr, Xte, Yte = make_xmc(args.train_rows, 2000, args.features, args.labels, seed=args.seed)
            rows = shard_rows(Xtr.shape[0], rank, world)
            Xtr, Ytr = Xtr[rows], Ytr[rows]
    except (FileNotFoundError, ValueError) as e:
        print(f"error (rank {rank}): {e}", file=sys.stderr)
        return 2
    say(f"data: {world} rank(s), {Xtr.shape[0]} training rows on rank 0, {Xte.shape[0]} test rows, "
        f"{Xtr.shape[1]} features, {Ytr.shape[1]} labels ({time.perf_counter() - t0:.1f} s)")

    model = ShardedSparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(args.hidden,), target_active=args.target_active,
                             lr=args.lr, seed=args.seed, timeout=args.timeout)
    say(f"model: {model}; output layer on rank 0: {model.output_nbytes / 2**20:.1f} MiB")
    t0 = time.perf_counter()
    model.fit(Xtr, Ytr, epochs=args.epochs, batch_size=args.batch_size, validation=(Xte, Yte),
              checkpoint=args.save, verbose=rank == 0)
    seconds = time.perf_counter() - t0
    res = model.evaluate(Xte, Yte, ks=(1, 5))
    say(f"trained {model.step} steps in {seconds:.1f} s; test P@1 {res['P@1']:.4f}, P@5 {res['P@5']:.4f}")
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
