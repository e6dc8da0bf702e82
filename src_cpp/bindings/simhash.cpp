#include "hashlab/simhash.h"

#include "bindings.h"
#include "blas.h"

namespace hashlab {

void bind_simhash(py::module_& m) {
  m.def("register_sgemm", [](py::capsule fn) { return register_sgemm(fn.get_pointer()); }, py::arg("fn"));

  m.def("simhash_dense_bits", [](carray<float> X, carray<float> W, int64_t nbits, const std::string& method) {
    DenseMethod dm;
    if (method == "auto") dm = DenseMethod::automatic;
    else if (method == "kernel") dm = DenseMethod::kernel;
    else if (method == "blas") dm = DenseMethod::blas;
    else throw std::invalid_argument("method: expected 'auto', 'kernel' or 'blas', got '" + method + "'");
    require_shape(X, "X", {-1, -1});
    require_shape(W, "W", {X.shape(1), -1});
    const int64_t n = X.shape(0), nwords = (nbits + 63) / 64;
    carray<uint64_t> out({n, nwords});
    {
      py::gil_scoped_release nogil;
      simhash_dense_bits(X.data(), n, X.shape(1), W.data(), W.shape(1), nbits, out.mutable_data(), dm);
    }
    return out;
  }, py::arg("X"), py::arg("W"), py::arg("nbits"), py::arg("method") = "auto");

  m.def("simhash_csr_bits", [](carray<int64_t> indptr, carray<int32_t> indices, carray<float> data,
                               carray<float> W, int64_t nbits) {
    require_shape(indptr, "indptr", {-1});
    require_shape(indices, "indices", {-1});
    require_shape(data, "data", {indices.shape(0)});
    require_shape(W, "W", {-1, -1});
    const int64_t n = indptr.shape(0) - 1, nwords = (nbits + 63) / 64;
    if (n < 0) throw std::invalid_argument("indptr: expected at least one entry");
    if (indptr.at(n) != indices.shape(0))
      throw std::invalid_argument("indptr: expected indptr[-1] == nnz");
    carray<uint64_t> out({n, nwords});
    {
      py::gil_scoped_release nogil;
      simhash_csr_bits(indptr.data(), indices.data(), data.data(), n, W.shape(0), W.data(), W.shape(1),
                       nbits, out.mutable_data());
    }
    return out;
  }, py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("W"), py::arg("nbits"));

  m.def("hadamard_bits", [](carray<float> X, carray<float> signs, int64_t nbits) {
    require_shape(X, "X", {-1, -1});
    require_shape(signs, "signs", {-1, -1});
    if (signs.shape(0) < 3) throw std::invalid_argument("signs: expected at least 3 rows (D1, D2, one D3)");
    const int64_t n = X.shape(0), nwords = (nbits + 63) / 64;
    int64_t D = 1;
    while (D < X.shape(1)) D <<= 1;
    if (signs.shape(1) != D) throw std::invalid_argument("signs: expected last dimension = next power of two >= dim");
    carray<uint64_t> out({n, nwords});
    {
      py::gil_scoped_release nogil;
      hadamard_bits(X.data(), n, X.shape(1), signs.data(), signs.shape(0) - 2, nbits, out.mutable_data());
    }
    return out;
  }, py::arg("X"), py::arg("signs"), py::arg("nbits"));

  m.def("bits_to_keys", [](carray<uint64_t> bits, int k, int l) {
    require_shape(bits, "bits", {-1, -1});
    carray<uint32_t> keys({bits.shape(0), (py::ssize_t)l});
    {
      py::gil_scoped_release nogil;
      bits_to_keys(bits.data(), bits.shape(0), bits.shape(1), k, l, keys.mutable_data());
    }
    return keys;
  }, py::arg("bits"), py::arg("k"), py::arg("l"));

  m.def("hamming", [](carray<uint64_t> a, carray<uint64_t> b) {
    require_shape(a, "a", {-1, -1});
    require_shape(b, "b", {-1, a.shape(1)});
    carray<int32_t> out({a.shape(0), b.shape(0)});
    {
      py::gil_scoped_release nogil;
      hamming_pairwise(a.data(), a.shape(0), b.data(), b.shape(0), a.shape(1), out.mutable_data());
    }
    return out;
  }, py::arg("a"), py::arg("b"));

  m.def("hamming_topm", [](carray<uint64_t> q, carray<uint64_t> b, int64_t m) {
    require_shape(q, "q", {-1, -1});
    require_shape(b, "b", {-1, q.shape(1)});
    if (m < 1 || m > b.shape(0)) throw py::value_error("hamming_topm: expected 1 <= m <= the number of rows of b");
    carray<int32_t> ids({q.shape(0), (py::ssize_t)m}), dist({q.shape(0), (py::ssize_t)m});
    {
      py::gil_scoped_release nogil;
      hamming_topm(q.data(), q.shape(0), b.data(), b.shape(0), q.shape(1), m, ids.mutable_data(),
                   dist.mutable_data());
    }
    return py::make_tuple(ids, dist);
  }, py::arg("q"), py::arg("b"), py::arg("m"));
}

}  // namespace hashlab
