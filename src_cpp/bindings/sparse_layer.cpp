// Bindings of the sparse output layer and lazy Adam (src_cpp/sparse_layer.cpp).
// Parameters are updated in place, so they are taken with noconvert(): a wrong
// dtype or a non-contiguous array is a TypeError, never a silently updated copy.
#include "hashlab/sparse_layer.h"

#include "bindings.h"

namespace hashlab {
namespace {

DenseParam param(carray<float>& w, carray<float>& m, carray<float>& v, const char* name) {
  if (w.ndim() == 1) {
    require_shape(m, name, {w.shape(0)});
    require_shape(v, name, {w.shape(0)});
    return DenseParam{w.mutable_data(), m.mutable_data(), v.mutable_data(), w.shape(0), 1};
  }
  require_shape(w, name, {-1, -1});
  require_shape(m, name, {w.shape(0), w.shape(1)});
  require_shape(v, name, {w.shape(0), w.shape(1)});
  return DenseParam{w.mutable_data(), m.mutable_data(), v.mutable_data(), w.shape(0), w.shape(1)};
}

AdamConfig adam_config(float lr, double beta1, double beta2, float eps, int64_t step) {
  AdamConfig a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.step = step;
  return a;
}

void check_csr(const carray<int64_t>& indptr, const carray<int32_t>& ids, int64_t n, const char* name) {
  require_shape(indptr, name, {n + 1});
  require_shape(ids, name, {-1});
  if (indptr.at(0) != 0 || indptr.at(n) != ids.shape(0))
    throw std::invalid_argument(std::string(name) + ": expected indptr from 0 to len(ids)");
  for (int64_t i = 0; i < n; ++i)
    if (indptr.at(i + 1) < indptr.at(i))
      throw std::invalid_argument(std::string(name) + ": expected a non-decreasing indptr");
}

}  // namespace

void bind_sparse_layer(py::module_& m) {
  m.def(
      "sparse_output_train",
      [](carray<float> H, carray<int64_t> cand_indptr, carray<int32_t> cand_ids, carray<int64_t> label_indptr,
         carray<int32_t> label_ids, int64_t target_active, uint64_t seed, carray<float> W, carray<float> mW,
         carray<float> vW, carray<float> b, carray<float> mb, carray<float> vb, float lr, double beta1, double beta2,
         float eps, int64_t step, carray<uint8_t> dirty) {
        require_shape(H, "H", {-1, -1});
        const int64_t n = H.shape(0);
        check_csr(cand_indptr, cand_ids, n, "candidates");
        check_csr(label_indptr, label_ids, n, "labels");
        DenseParam Wp = param(W, mW, vW, "W"), bp = param(b, mb, vb, "b");
        if (Wp.d != H.shape(1)) throw std::invalid_argument("H: expected as many columns as W");
        require_shape(dirty, "dirty", {Wp.rows});
        OutputBatch batch{H.data(), n, cand_indptr.data(), cand_ids.data(), label_indptr.data(),
                          label_ids.data(), target_active, seed};
        carray<float> dH({n, Wp.d});
        OutputStats st;
        {
          py::gil_scoped_release nogil;
          st = sparse_output_train(batch, Wp, bp, adam_config(lr, beta1, beta2, eps, step), dH.mutable_data(),
                                   dirty.mutable_data());
        }
        return py::make_tuple(st.loss_sum, st.active_total, st.touched_rows, dH);
      },
      py::arg("H"), py::arg("cand_indptr"), py::arg("cand_ids"), py::arg("label_indptr"), py::arg("label_ids"),
      py::arg("target_active"), py::arg("seed"), py::arg("W").noconvert(), py::arg("mW").noconvert(),
      py::arg("vW").noconvert(), py::arg("b").noconvert(), py::arg("mb").noconvert(), py::arg("vb").noconvert(),
      py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("step"),
      py::arg("dirty").noconvert());

  m.def(
      "softmax_xent_grad",
      [](carray<float> Z, carray<int64_t> label_indptr, carray<int32_t> label_ids) {
        require_shape(Z, "Z", {-1, -1});
        check_csr(label_indptr, label_ids, Z.shape(0), "labels");
        py::gil_scoped_release nogil;
        return softmax_xent_grad(Z.mutable_data(), Z.shape(0), Z.shape(1), label_indptr.data(), label_ids.data());
      },
      py::arg("Z").noconvert(), py::arg("label_indptr"), py::arg("label_ids"));

  m.def(
      "gather_scores",
      [](carray<float> H, carray<float> W, py::object b, carray<int64_t> indptr, carray<int32_t> ids) {
        require_shape(H, "H", {-1, -1});
        require_shape(W, "W", {-1, H.shape(1)});
        check_csr(indptr, ids, H.shape(0), "candidates");
        carray<float> bias;
        const float* bp = nullptr;
        if (!b.is_none()) {
          bias = b.cast<carray<float>>();
          require_shape(bias, "b", {W.shape(0)});
          bp = bias.data();
        }
        carray<float> scores(ids.shape(0));
        {
          py::gil_scoped_release nogil;
          gather_scores(H.data(), H.shape(0), H.shape(1), W.data(), bp, W.shape(0), indptr.data(), ids.data(),
                        scores.mutable_data());
        }
        return scores;
      },
      py::arg("H"), py::arg("W"), py::arg("b"), py::arg("indptr"), py::arg("ids"));

  m.def(
      "adam_rows",
      [](carray<float> W, carray<float> M, carray<float> V, carray<int64_t> rows, carray<float> G, float lr,
         double beta1, double beta2, float eps, int64_t step) {
        DenseParam P = param(W, M, V, "W");
        require_shape(rows, "rows", {-1});
        require_shape(G, "G", {rows.shape(0), P.d});
        py::gil_scoped_release nogil;
        adam_rows(P, rows.data(), rows.shape(0), G.data(), adam_config(lr, beta1, beta2, eps, step));
      },
      py::arg("W").noconvert(), py::arg("M").noconvert(), py::arg("V").noconvert(), py::arg("rows"), py::arg("G"),
      py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("step"));
}

}  // namespace hashlab
