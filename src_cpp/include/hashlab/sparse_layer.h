// The sparse output layer of SLIDE-style training and its lazy Adam optimiser.
//
// Per sample i, the active set is: the true labels first, then LSH candidates in
// the order given (best first) until target_active neurons, then uniformly random
// neurons if still short. Softmax cross-entropy runs over the active set only,
// with the target spread evenly over the labels. target_active >= n_out makes
// every neuron active (exact dense training).
//
// The backward pass groups the batch's (neuron, sample, dz) triples by neuron, so
// each touched row's gradient is summed by one thread and its Adam step applied at
// once: no races, no per-neuron per-sample buffers, and results independent of the
// thread count.
//
// Lazy Adam (as torch.optim.SparseAdam): only touched rows update, with the global
// step t for bias correction:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   w -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
// Untouched rows keep w, m and v as they are.
#pragma once
#include <cstdint>

namespace hashlab {

struct AdamConfig {
  float lr = 1e-3f, eps = 1e-8f;
  // double: 1 - beta and the bias corrections 1 - beta^t are taken from the exact value; from
  // float(0.999) they would be 1.3e-5 off (float(1 - 0.999) is within 2^-24 of 0.001)
  double beta1 = 0.9, beta2 = 0.999;
  int64_t step = 1;  // t >= 1, the step being taken
};

struct DenseParam {  // a (rows, d) weight matrix with its Adam moments
  float* w;
  float* m;
  float* v;
  int64_t rows, d;
};

struct OutputBatch {
  const float* H;  // (n, d) last hidden activations
  int64_t n;
  const int64_t* cand_indptr;  // (n + 1) candidates per sample, best first (may repeat labels)
  const int32_t* cand_ids;
  const int64_t* label_indptr;  // (n + 1) true labels per sample, unique
  const int32_t* label_ids;
  int64_t target_active;
  uint64_t seed;  // random fill: per-sample streams derived from (seed, sample)
};

struct OutputStats {
  double loss_sum = 0;        // summed over samples
  int64_t active_total = 0;   // summed active set sizes
  int64_t touched_rows = 0;   // distinct neurons updated
};

// One training step of the output layer W (n_out, d) and bias b (n_out, 1 column
// in a DenseParam with d = 1). Writes dH (n, d) = dLoss/dH; sets dirty[row] = 1
// for every updated row (dirty may be null).
OutputStats sparse_output_train(const OutputBatch& batch, DenseParam& W, DenseParam& b,
                                const AdamConfig& adam, float* dH, uint8_t* dirty);

// Full softmax cross-entropy of logits Z (n, n_out), the target spread evenly over each
// sample's labels (unique): Z becomes dLoss/dZ = softmax(Z) - target; returns the summed loss.
double softmax_xent_grad(float* Z, int64_t n, int64_t n_out, const int64_t* label_indptr,
                         const int32_t* label_ids);

// scores[p] = <H[i], W[ids[p]]> + b[ids[p]] for the candidates p of sample i (b may be null).
void gather_scores(const float* H, int64_t n, int64_t d, const float* W, const float* b,
                   int64_t n_out, const int64_t* indptr, const int32_t* ids, float* scores);

// Lazy Adam on rows (u,) (unique, in [0, P.rows)) with gradients G (u, P.d).
void adam_rows(DenseParam& P, const int64_t* rows, int64_t u, const float* G, const AdamConfig& adam);

}  // namespace hashlab
