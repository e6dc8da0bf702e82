// Bindings of the WTA / DWTA and MinHash kernels (include/hashlab/wta.h).
// The Python classes in hashlab/wta.py and hashlab/minhash.py make the parameter
// arrays and validate user input; here we check shapes again so that no call,
// however wrong, can reach the kernels with out-of-bounds sizes.
#include <vector>

#include "bindings.h"
#include "hashlab/wta.h"

namespace hashlab {
namespace {

// indptr (n+1) non-decreasing from >= 0 to at most nnz; returns n.
int64_t check_indptr(const carray<int64_t>& indptr, int64_t nnz) {
  require_shape(indptr, "indptr", {-1});
  const int64_t n = indptr.shape(0) - 1;
  if (n < 0) throw std::invalid_argument("indptr: expected at least 1 entry (n + 1), got 0");
  const int64_t* ip = indptr.data();
  if (ip[0] < 0) throw std::invalid_argument("indptr: expected indptr[0] >= 0, got " + std::to_string(ip[0]));
  for (int64_t r = 0; r < n; ++r)
    if (ip[r] > ip[r + 1]) throw std::invalid_argument("indptr: expected non-decreasing offsets");
  if (ip[n] > nnz)
    throw std::invalid_argument("indptr: expected indptr[-1] <= len(indices) = " + std::to_string(nnz) + ", got " +
                                std::to_string(ip[n]));
  return n;
}

// The keys array: a new one, or `out` written in place (it must be exactly a
// C-contiguous, writeable (n, l) uint32 array: a converted copy would silently
// drop the results).
uint32_t* keys_out(const py::object& out, int64_t n, int64_t l, py::object& result) {
  if (!out.is_none()) {
    if (!py::isinstance<py::array>(out)) throw py::type_error("out: expected a numpy uint32 array");
    py::array o = py::reinterpret_borrow<py::array>(out);
    if (!o.dtype().equal(py::dtype::of<uint32_t>())) throw py::type_error("out: expected dtype uint32");
    require_shape(o, "out", {n, l});
    if (!(o.flags() & py::array::c_style) || !o.writeable())
      throw std::invalid_argument("out: expected a C-contiguous, writeable array");
    result = o;
    return static_cast<uint32_t*>(o.mutable_data());
  }
  carray<uint32_t> o({n, l});
  result = o;
  return o.mutable_data();
}

struct WtaArgs {
  WtaParams p;
  int64_t nb;
};

WtaArgs make_params(int64_t dim, int k, int l, int bin_size, int n_perm, const carray<int32_t>& bin_coords,
                    const carray<int32_t>& coord_slot, const carray<uint32_t>& A, const carray<uint32_t>& B,
                    const carray<uint32_t>& Binv, bool densified) {
  if (dim < 1) throw std::invalid_argument("dim: expected dim >= 1, got " + std::to_string(dim));
  if (k < 1 || l < 1 || (int64_t)k * l > 65535)
    throw std::invalid_argument("k, l: expected k >= 1, l >= 1 and k*l <= 65535");
  if (bin_size < 2) throw std::invalid_argument("bin_size: expected a power of two >= 2");
  if (n_perm < 1) throw std::invalid_argument("n_perm: expected n_perm >= 1");
  const int64_t nb = (int64_t)k * l;
  require_shape(bin_coords, "bin_coords", {nb, bin_size});
  require_shape(coord_slot, "coord_slot", {n_perm, dim});
  if (densified) {
    require_shape(A, "A", {nb});
    require_shape(B, "B", {nb});
    require_shape(Binv, "Binv", {nb});
  }
  WtaParams p;
  p.dim = dim;
  p.k = k;
  p.l = l;
  p.bin_size = bin_size;
  p.n_perm = n_perm;
  p.bin_coords = bin_coords.data();
  p.coord_slot = coord_slot.data();
  p.probe = Probe{A.data(), B.data(), Binv.data()};
  return {p, nb};
}

py::object wta_dense_py(carray<float> X, int64_t dim, int k, int l, int bin_size, int n_perm,
                        carray<int32_t> bin_coords, carray<int32_t> coord_slot, carray<uint32_t> A,
                        carray<uint32_t> B, carray<uint32_t> Binv, bool densified, bool want_codes,
                        py::object out) {
  WtaArgs w = make_params(dim, k, l, bin_size, n_perm, bin_coords, coord_slot, A, B, Binv, densified);
  require_shape(X, "X", {-1, dim});
  const int64_t n = X.shape(0);
  py::object keys_obj;
  uint32_t* keys = keys_out(out, n, l, keys_obj);
  carray<int32_t> codes(want_codes ? std::vector<py::ssize_t>{n, w.nb} : std::vector<py::ssize_t>{0, w.nb});
  int32_t* cp = want_codes ? codes.mutable_data() : nullptr;
  const float* xp = X.data();
  {
    py::gil_scoped_release release;
    wta_dense(xp, n, w.p, densified, cp, keys);
  }
  if (want_codes) return py::make_tuple(keys_obj, codes);
  return keys_obj;
}

py::object wta_csr_py(carray<int64_t> indptr, carray<int32_t> indices, carray<float> data, int64_t dim, int k, int l,
                      int bin_size, int n_perm, carray<int32_t> bin_coords, carray<int32_t> coord_slot,
                      carray<uint32_t> A, carray<uint32_t> B, carray<uint32_t> Binv, bool densified, bool want_codes,
                      py::object out) {
  WtaArgs w = make_params(dim, k, l, bin_size, n_perm, bin_coords, coord_slot, A, B, Binv, densified);
  require_shape(indices, "indices", {-1});
  require_shape(data, "data", {indices.shape(0)});
  const int64_t n = check_indptr(indptr, indices.shape(0));
  py::object keys_obj;
  uint32_t* keys = keys_out(out, n, l, keys_obj);
  carray<int32_t> codes(want_codes ? std::vector<py::ssize_t>{n, w.nb} : std::vector<py::ssize_t>{0, w.nb});
  int32_t* cp = want_codes ? codes.mutable_data() : nullptr;
  const int64_t* ip = indptr.data();
  const int32_t* ix = indices.data();
  const float* dp = data.data();
  {
    py::gil_scoped_release release;
    wta_csr(ip, ix, dp, n, w.p, densified, cp, keys);
  }
  if (want_codes) return py::make_tuple(keys_obj, codes);
  return keys_obj;
}

py::tuple minhash_csr_py(carray<int64_t> indptr, carray<int32_t> indices, int k, int l, uint64_t a, uint64_t c,
                         carray<uint32_t> A, carray<uint32_t> B, carray<uint32_t> Binv,
                         py::object out) {
  if (k < 1 || l < 1 || (int64_t)k * l > 65535)
    throw std::invalid_argument("k, l: expected k >= 1, l >= 1 and k*l <= 65535");
  const int64_t nb = (int64_t)k * l;
  require_shape(A, "A", {nb});
  require_shape(B, "B", {nb});
  require_shape(Binv, "Binv", {nb});
  require_shape(indices, "indices", {-1});
  const int64_t n = check_indptr(indptr, indices.shape(0));
  py::object keys_obj;
  uint32_t* keys = keys_out(out, n, l, keys_obj);
  carray<uint32_t> sig({n, nb});
  uint32_t* sp = sig.mutable_data();
  const int64_t* ip = indptr.data();
  const int32_t* ix = indices.data();
  const Probe probe{A.data(), B.data(), Binv.data()};
  {
    py::gil_scoped_release release;
    minhash_csr(ip, ix, n, k, l, a, c, probe, sp, keys);
  }
  return py::make_tuple(sig, keys_obj);
}

}  // namespace

void bind_wta(py::module_& m) {
  m.def("wta_dense", &wta_dense_py, py::arg("X"), py::arg("dim"), py::arg("k"), py::arg("l"), py::arg("bin_size"),
        py::arg("n_perm"), py::arg("bin_coords"), py::arg("coord_slot"), py::arg("A"), py::arg("B"), py::arg("Binv"),
        py::arg("densified"), py::arg("want_codes") = false, py::arg("out") = py::none(),
        "WTA (densified=False) or DWTA codes of dense rows X (n, dim) float32.\n"
        "Returns keys (n, l) uint32, or (keys, codes (n, k*l) int32) when want_codes.");
  m.def("wta_csr", &wta_csr_py, py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("dim"), py::arg("k"),
        py::arg("l"), py::arg("bin_size"), py::arg("n_perm"), py::arg("bin_coords"), py::arg("coord_slot"),
        py::arg("A"), py::arg("B"), py::arg("Binv"), py::arg("densified"), py::arg("want_codes") = false,
        py::arg("out") = py::none(),
        "WTA / DWTA of CSR rows (indptr int64, indices int32, data float32); returns as wta_dense.");
  m.def("minhash_csr", &minhash_csr_py, py::arg("indptr"), py::arg("indices"), py::arg("k"), py::arg("l"),
        py::arg("a"), py::arg("c"), py::arg("A"), py::arg("B"), py::arg("Binv"), py::arg("out") = py::none(),
        "Densified one-permutation MinHash of the column-id sets of CSR rows.\n"
        "Returns (signatures (n, k*l) uint32, keys (n, l) uint32).");
}

}  // namespace hashlab
