"""SparseMLP's training loop: ``fit`` and its validation, progress, early-stopping and init helpers.

``_Training`` is a base class of hashlab.slide.SparseMLP (the model: layers, tables, batches,
prediction); it holds no state of its own.
"""
from __future__ import annotations

import signal
import threading
import time

import numpy as np
import scipy.sparse as sp

from ._validate import check_choice, check_float, check_int
from .csr import row_norms, times_dense
from .rerank import fit_stage as _fit_rerank_stage
from .rerank import reserve as _rerank_reserve
from . import neighbours as _nb
from .slide_data import _as_features, _as_labels
from .train_control import SCHEDULES, EarlyStopping, RunClock, lr_factor

DEFAULT_EPOCHS = 5      # fit's passes when neither epochs nor time_budget is given
DEFAULT_BATCH = 256
CENTROID_SCALE = 10.0      # logit scale of centroid-initialised output rows (fit's init="centroid")
MAX_HELD_OUT = 20_000   # rows a fractional validation holds out, at most
# fit's automatic evaluations wait while they have taken more than this share of its time:
# scoring 2,000 rows against 20K labels costs as much as ~20 training batches, and at 10 per
# epoch they took 79% of a 30 s budget (amazon-670k-like at scale 0.03)
EVAL_SHARE = 0.1


class _Training:
    """SparseMLP's ``fit`` (see hashlab.slide.SparseMLP)."""

    def fit(self, X, Y, epochs=None, batch_size=DEFAULT_BATCH, validation=None, checkpoint=None,
            checkpoint_every=None, eval_every=None, eval_size=2000, verbose=True, time_budget=None,
            early_stopping=None, restore_best=True, lr_schedule="linear", warmup=0.05, init="centroid",
            rerank=True, neighbours=True):
        """Trains on X (n, input_dim) CSR float32 with labels Y; returns self.

        Y: CSR indicator (n, output_dim) or a list of n label lists. Shuffles every epoch;
        can be called again to continue (each call is one planned run of the lr schedule).

        Length: ``epochs`` passes over the rows and/or ``time_budget`` seconds of wall clock
        (training, evaluations and checkpoints all count; checked after every batch, so
        fit returns at most one batch and one evaluation after the budget). Neither given:
        DEFAULT_EPOCHS passes; only time_budget: as many passes as fit in it.
        lr_schedule: "linear" (default), "cosine" or "constant" over the planned run (the
        fraction of planned batches, or of the budget, done; see hashlab.train_control),
        after a linear warm-up over the first ``warmup`` fraction (float in [0, 1)).

        validation: None, (X_val, Y_val), or a float in (0, 0.5): that fraction of the
        given rows (a seeded random choice, at most 20,000 rows) is held out of training.
        P@1 on ``eval_size`` of its rows (int, or None for all of them; a fixed random
        sample) is computed every ``eval_every`` batches (default: 10 times per epoch, and at
        least every 5% of a time budget, skipped while evaluations have taken more than
        EVAL_SHARE of the time so far) and after the last batch, shown on the progress bar and
        appended to ``self.history``. early_stopping: None or int patience: stop after that
        many evaluations in a row without a better P@1. restore_best (default True, with
        validation): at the end the weights of the best evaluation are put back (the Adam
        moments stay the latest) and the tables rebuilt over them.

        checkpoint: a path saved atomically every ``checkpoint_every`` batches (default:
        each epoch) and at the end. KeyboardInterrupt stops after the current batch, leaving
        the model consistent and the last checkpoint intact. ``self.history`` records: time
        (training seconds, evaluations excluded, cumulative over fit calls), step, samples,
        loss (moving average), lr, P@1. ``self.label_counts_`` accumulates training rows per label.

        init: "centroid" (default) or "random", used only by the first fit of a new model:
        "centroid" sets each output row with training rows to the hidden activation of its
        label's L2-normalised feature centroid (PIFA, as PECOS clusters labels), unit length
        times CENTROID_SCALE / the mean hidden norm, so training starts from a nearest-centroid
        classifier instead of chance; labels without rows keep the random init.
        rerank: True (default) ends fit with a FeatureReranker (hashlab.rerank: hashed per-label
        linear weights over the input features and a scaled copy of the MLP's logits, one logistic
        output per label of the MLP's top 32; trained on training rows' top 32 with at most 16 true
        labels and the MLP's hardest wrong labels for the rest, rows this call did not train the
        MLP on first, the MLP fixed), given hashlab.rerank.SHARE (40%) of time_budget (less when a
        sample of rows shows it needs less: hashlab.rerank.reserve), and kept only if it does not
        lower validation P@1 (when validation is given); ``predict_topk`` and ``evaluate`` then use it, ``rerank_report_`` says what it
        did. Every fit call trains a new one on the model it leaves.
        neighbours: True (default) then adds the label votes of the 30 training rows nearest in
        hidden space to the top-32 (hashlab.neighbours.HiddenNeighbours: cosine, weighted by
        cos ** 4), with the weight of the votes chosen on the validation rows (up to
        hashlab.neighbours.SHARE, 10%, of time_budget, taken from the MLP's share) and dropped when
        no weight raises validation P@1; needs validation rows (without them nothing is built).
        It keeps the training rows' hidden activations (n, hidden[-1]) float32 and labels in
        the model and its files: prediction then costs one more product against them.
        ``neighbours_report_`` says what it did.
        """
        self._check_trainable()
        X = _as_features(X, self.input_dim)
        n = X.shape[0]
        if n == 0:
            raise ValueError("X: expected at least one row, got an empty data set")
        Y = _as_labels(Y, n, self.output_dim)
        if time_budget is not None:
            time_budget = check_float(time_budget, "time_budget", 0.0, 1e9, lo_open=True)
        if epochs is None:
            epochs = DEFAULT_EPOCHS if time_budget is None else None
        else:
            epochs = check_int(epochs, "epochs", 0)
        batch_size = check_int(batch_size, "batch_size", 1)
        if eval_size is not None:
            eval_size = check_int(eval_size, "eval_size", 1)
        if early_stopping is not None:
            early_stopping = check_int(early_stopping, "early_stopping", 1)
            if validation is None:
                raise ValueError("early_stopping: expected validation data (a tuple or a held-out fraction), got None")
        lr_schedule = check_choice(lr_schedule, "lr_schedule", SCHEDULES)
        warmup = check_float(warmup, "warmup", 0.0, 1.0, hi_open=True)
        if checkpoint_every is not None:
            checkpoint_every = check_int(checkpoint_every, "checkpoint_every", 1)
        X, Y, val = self._split_validation(X, Y, validation, eval_size)
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        auto_eval = eval_every is None
        if auto_eval:
            eval_every = max(1, n_batches // 10)
        else:
            eval_every = check_int(eval_every, "eval_every", 1)
        init = check_choice(init, "init", ("centroid", "random"))
        for name, flag in (("rerank", rerank), ("neighbours", neighbours)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")
        # both score the MLP they were fitted on: refitted at the end
        self.reranker = self.neighbours = None
        t_start = time.perf_counter()
        mlp_budget = nb_reserve = None
        if time_budget is not None:
            nb_reserve = _nb.SHARE * time_budget if neighbours and val is not None else 0.0
            # the re-ranker's share, or less when a sample says it needs less (small data sets)
            rr_reserve = _rerank_reserve(self, X, Y, 0 if val is None else val[0].shape[0], time_budget) \
                if rerank else 0.0
            mlp_budget = max(0.0, time_budget - nb_reserve - rr_reserve - (time.perf_counter() - t_start))
        clock = RunClock(None, mlp_budget)  # the budget covers the init and everything after it
        if self.step == 0 and self._auto_active:
            self._choose_softmax(Y)
        if init == "centroid" and self.step == 0:
            self._init_from_centroids(X, Y)
        counts = np.bincount(Y.indices, minlength=self.output_dim).astype(np.int64)
        self.label_counts_ = counts if self.label_counts_ is None else self.label_counts_ + counts
        self.train_rows_ += n

        from tqdm.auto import tqdm

        interrupted = []
        restore = None
        if threading.current_thread() is threading.main_thread():
            restore = signal.signal(signal.SIGINT, lambda *a: interrupted.append(True))
        clock.total_batches = None if epochs is None else epochs * n_batches
        stopper = EarlyStopping(early_stopping, restore_best and val is not None)
        total = epochs * n if epochs is not None else None
        bar = tqdm(total=total, unit="samples", disable=not verbose, dynamic_ncols=True)
        seen, ema, eval_s = 0, None, 0.0  # eval_s: evaluation time, kept off the training clock
        visited = np.zeros(n, np.bool_)  # rows this call trained on (the re-ranker prefers the others)
        last_eval = 0.0
        train_time, prior = (self.history[-1]["time"], self.history[-1]["samples"]) if self.history else (0.0, 0)
        stop = False
        try:
            epoch = 0
            while not stop and (epochs is None or epoch < epochs):
                order = self._epoch_rng.permutation(n)
                for b in range(n_batches):
                    self._lr_scale = lr_factor(lr_schedule, clock.progress(), warmup)
                    idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
                    loss, _ = self._train_batch(X[idx], Y[idx])
                    visited[idx] = True
                    clock.batches += 1
                    seen += idx.size
                    ema = loss / idx.size if ema is None else 0.95 * ema + 0.05 * loss / idx.size
                    bar.update(idx.size)
                    out_of_time = clock.out_of_time()
                    elapsed = clock.elapsed() - eval_s
                    last = out_of_time or (epochs is not None and epoch == epochs - 1 and b == n_batches - 1)
                    # with a budget: every 5% of it too
                    by_time = time_budget is not None and elapsed - last_eval >= 0.05 * time_budget
                    planned = (b + 1) % eval_every == 0 or b == n_batches - 1 or by_time
                    if auto_eval and eval_s > EVAL_SHARE * clock.elapsed():
                        planned = False
                    due = val is not None and (planned or last)
                    if due:
                        last_eval = elapsed
                    dt, p1 = self._report_progress(bar, val if due else None, ema, seen, elapsed, train_time, prior)
                    eval_s += dt
                    if p1 is not None and stopper.update(p1, self.step, self._weights):
                        stop = True
                    if checkpoint is not None and checkpoint_every is not None and self.step % checkpoint_every == 0:
                        self.save(checkpoint)
                    if interrupted:
                        raise KeyboardInterrupt
                    if stop or out_of_time:
                        stop = True
                        break
                epoch += 1
                if checkpoint is not None and checkpoint_every is None:
                    self.save(checkpoint)
        finally:
            bar.close()
            self._lr_scale = 1.0
            if restore is not None:
                signal.signal(signal.SIGINT, restore)
        if stopper.snapshot is not None and stopper.best > self.history[-1]["P@1"]:
            self._restore_weights(stopper.snapshot)
            self.best_step_ = stopper.best_step
        if rerank:
            deadline = None if time_budget is None else t_start + time_budget - nb_reserve
            self.reranker, self.rerank_report_ = _fit_rerank_stage(self, X, Y, val, deadline, self.seed + 7,
                                                                   visited)
            if verbose:
                r = self.rerank_report_
                vals = f", val P@1 {r['val_P@1_without']:.4f} -> {r['val_P@1_with']:.4f}" if "val_P@1_with" in r else ""
                print(f"re-ranker: {r['rows']} rows, {r['epochs']} epochs, {r['seconds']:.1f} s{vals}, "
                      f"{'kept' if r['kept'] else 'not kept'}")
        if neighbours:
            deadline = None if time_budget is None else t_start + time_budget
            self.neighbours, self.neighbours_report_ = _nb.fit_stage(self, X, Y, val, deadline)
            if verbose and "val_P@1_with" in self.neighbours_report_:
                r = self.neighbours_report_
                print(f"neighbours: weight {r['weight']:g}, {r['seconds']:.1f} s, val P@1 "
                      f"{r['val_P@1_without']:.4f} -> {r['val_P@1_with']:.4f}, {'kept' if r['kept'] else 'not kept'}")
        if checkpoint is not None:
            self.save(checkpoint)
        return self

    def _choose_softmax(self, Y):
        """target_active=None: the full softmax for rows with many labels and a small enough output
        layer (MANY_LABELS, FULL_SOFTMAX_MAX in hashlab.slide; SparseMLP's target_active says why)."""
        from .slide import FULL_SOFTMAX_MAX, MANY_LABELS
        if Y.nnz >= MANY_LABELS * Y.shape[0] and self.output_dim <= FULL_SOFTMAX_MAX:
            self.target_active = self.output_dim

    def _init_from_centroids(self, X, Y, block=16384):
        """Output rows from the labels' feature centroids (see fit's init); X, Y canonical CSR."""
        Yt = sp.csr_matrix(Y.T, dtype=np.float32)  # (output_dim, n)
        C = (Yt @ X).tocsr()  # (output_dim, input_dim) sums of each label's rows: their norms only
        norms = row_norms(C)
        has = np.flatnonzero(norms > 0)
        if has.size == 0:
            return
        h_norm = float(np.linalg.norm(self._hidden(X[:2000])[-1], axis=1).mean())
        if not h_norm > 0:
            return
        # the first layer is linear: (C / |C|) W = (Y^T (X W)) / |C|, one product over the rows
        # instead of one over the label sums, which hold most features each on dense data
        # (delicious-like at scale 0.05: 24 s -> under 1 s)
        Z = times_dense(Yt, self._first_product(X))
        for s in range(0, has.size, block):
            ids = has[s:s + block]
            E = self._hidden_from(Z[ids] / norms[ids, None].astype(np.float32))[-1]
            n = np.linalg.norm(E, axis=1, keepdims=True)
            ok = n[:, 0] > 0
            self.out_w.w[ids[ok]] = E[ok] * np.float32(CENTROID_SCALE / h_norm) / n[ok]
        self._build_tables()
        if self.hash == "learned":
            self._sched.clear()
            self._sched.update(np.arange(self.output_dim), self.out_w.w)

    def _weights(self):
        """Every trained weight array (the order _restore_weights expects)."""
        return [p.w for _, p in self._named_params()]

    def _restore_weights(self, arrays):
        """Puts back weights copied by _weights() and rebuilds the tables over them."""
        for (_, p), a in zip(self._named_params(), arrays):
            p.w[...] = a
        self._build_tables()
        if self.hash == "learned":
            self._sched.clear()
            self._sched.update(np.arange(self.output_dim), self.out_w.w)

    def _report_progress(self, bar, val, ema, seen, elapsed, train_time, prior):
        """Progress-bar figures; with val (X_val, Y_val), also P@1 appended to history (clock
        stopped). Returns (seconds the evaluation took, P@1 or None)."""
        post = {"loss": f"{ema:.3f}", "samples/s": f"{seen / max(elapsed, 1e-9):.0f}"}
        te = time.perf_counter()
        p1 = None
        if val is not None:
            p1 = self._precision_at_1(*val)
            post["val P@1"] = f"{p1:.4f}"
            self.history.append({"time": train_time + elapsed, "step": self.step, "samples": prior + seen,
                                 "loss": ema, "lr": self.lr * self._lr_scale, "P@1": p1})
        bar.set_postfix(post, refresh=False)
        return time.perf_counter() - te, p1

    def _split_validation(self, X, Y, validation, eval_size):
        """(X, Y, validation) -> (training rows, their labels, (X_val, Y_val) sample or None).

        validation: None, a tuple (X_val, Y_val), or a fraction of (X, Y) to hold out."""
        if validation is None:
            return X, Y, None
        rng = np.random.default_rng(self.seed + 4)
        if isinstance(validation, (float, np.floating)):
            frac = check_float(validation, "validation", 0.0, 0.5, lo_open=True, hi_open=True)
            n = X.shape[0]
            n_val = min(MAX_HELD_OUT, max(1, int(round(frac * n))))
            if n_val < 1 or n_val >= n:
                raise ValueError(f"validation: a fraction {frac} of {n} rows holds out {n_val}; expected 1 to {n - 1}")
            perm = rng.permutation(n)
            held, kept = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            Xv, Yv, X, Y = X[held], Y[held], X[kept], Y[kept]
        elif isinstance(validation, (tuple, list)) and len(validation) == 2:
            Xv = _as_features(validation[0], self.input_dim)
            Yv = _as_labels(validation[1], Xv.shape[0], self.output_dim)
        else:
            raise TypeError(f"validation: expected a tuple (X_val, Y_val) or a float fraction, got "
                            f"{type(validation).__name__}")
        if eval_size is not None and eval_size < Xv.shape[0]:
            sub = np.sort(rng.permutation(Xv.shape[0])[:eval_size])
            Xv, Yv = Xv[sub], Yv[sub]
        return X, Y, (Xv, Yv)
