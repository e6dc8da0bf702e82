"""Train a SLIDE-style sparse MLP on CPU and report P@1/P@5 and time.

    python examples/train_sparse_mlp.py                      # built-in synthetic data (a few minutes)
    python examples/train_sparse_mlp.py train.txt test.txt   # your Extreme Classification files
    python examples/train_sparse_mlp.py --labels 200000 --epochs 2 --save model.npz

Data files use the Extreme Classification Repository format (header "N D L", then
rows "l1,l2 f:v f:v") or libsvm multi-label rows; see hashlab.datasets.load_xmc.
"""
import argparse
import sys
import time

import hashlab
from hashlab.datasets import load_xmc, make_xmc
from hashlab.slide import SparseMLP


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", nargs="?", help="training file (XMC or libsvm format); default: synthetic data")
    ap.add_argument("test", nargs="?", help="test file; default: the synthetic test split")
    ap.add_argument("--labels", type=int, default=50_000, help="synthetic: number of labels (default 50000)")
    ap.add_argument("--features", type=int, default=50_000, help="synthetic: number of features")
    ap.add_argument("--train-rows", type=int, default=60_000, help="synthetic: training rows")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--target-active", type=int, default=None, help="active output neurons per sample")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save", help="write the trained model here (.npz)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        hashlab.set_num_threads(args.threads)

    t0 = time.perf_counter()
    if args.train:
        try:
            Xtr, Ytr = load_xmc(args.train)
            Xte, Yte = load_xmc(args.test, n_features=Xtr.shape[1], n_labels=Ytr.shape[1]) if args.test else (None, None)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if Xte is None:  # hold out 5% for evaluation
            cut = int(Xtr.shape[0] * 0.95)
            Xtr, Ytr, Xte, Yte = Xtr[:cut], Ytr[:cut], Xtr[cut:], Ytr[cut:]
        source = args.train
    else:
        Xtr, Ytr, Xte, Yte = make_xmc(args.train_rows, max(2000, args.train_rows // 20), args.features, args.labels,
                                      seed=args.seed)
        source = "synthetic"
    print(f"data: {source}: {Xtr.shape[0]} train / {Xte.shape[0]} test rows, {Xtr.shape[1]} features, "
          f"{Ytr.shape[1]} labels (loaded in {time.perf_counter() - t0:.1f} s)")

    model = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(args.hidden,), target_active=args.target_active,
                      lr=args.lr, seed=args.seed)
    print(f"model: {model}, {model.nbytes / 2**20:.0f} MiB; SIMD {hashlab.simd_level()}, "
          f"{hashlab.get_num_threads()} threads")
    t1 = time.perf_counter()
    model.fit(Xtr, Ytr, epochs=args.epochs, batch_size=args.batch_size, validation=(Xte, Yte),
              checkpoint=args.save)
    train_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    dense = model.evaluate(Xte, Yte, ks=(1, 5))
    dense_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    lsh = model.evaluate(Xte, Yte, ks=(1, 5), mode="lsh")
    lsh_s = time.perf_counter() - t3
    print(f"trained {args.epochs} epoch(s) in {train_s:.1f} s ({args.epochs * Xtr.shape[0] / train_s:.0f} samples/s), "
          f"{model.rebuilds} table rebuilds")
    print(f"test P@1 {dense['P@1']:.4f}  P@5 {dense['P@5']:.4f}  (dense inference, {dense_s:.1f} s)")
    print(f"test P@1 {lsh['P@1']:.4f}  P@5 {lsh['P@5']:.4f}  (LSH inference, {lsh_s:.1f} s)")
    if args.save:
        print(f"saved to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
