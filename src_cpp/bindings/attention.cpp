// hashlab._C: LSH-sampled attention (src_cpp/attention_*.cpp) for hashlab/attention.py.
// Shapes and dtypes are checked here (the Python layer validates values first); the GIL
// is released around every core call.
#include "hashlab/attention.h"

#include <string>

#include "bindings.h"

namespace hashlab {
namespace {

// A C-contiguous float32 or uint16 (bfloat16 bits) array; returns true for bfloat16.
bool kv_dtype(const py::array& a, const char* name) {
  const bool f32 = a.dtype().equal(py::dtype::of<float>());
  const bool b16 = a.dtype().equal(py::dtype::of<uint16_t>());
  if (!f32 && !b16) throw py::type_error(std::string(name) + ": expected float32 or uint16 (bfloat16 bits)");
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + ": expected a C-contiguous array");
  return b16;
}

void require_kv(const py::array& K, const py::array& V, int64_t n_kv, int64_t d, bool& bf16) {
  const bool kb = kv_dtype(K, "keys"), vb = kv_dtype(V, "values");
  if (kb != vb) throw py::type_error("keys, values: expected the same dtype");
  require_shape(K, "keys", {n_kv, -1, d});
  require_shape(V, "values", {n_kv, K.shape(1), d});
  bf16 = kb;
}

}  // namespace

void bind_attention(py::module_& m) {
  py::class_<LSHAttentionIndex>(m, "LSHAttentionIndex", py::module_local(),
                                 "LSH-sampled KV index (use hashlab.attention.LSHKVIndex).")
      .def(py::init([](int64_t head_dim, int64_t n_kv_heads, int k, int l, int min_collisions, int64_t sinks,
                       int64_t window, int64_t chunk, int64_t max_sampled, bool bf16, uint64_t seed,
                       const carray<float>& signs) {
             require_shape(signs, "signs", {-1, -1});
             AttentionConfig c;
             c.head_dim = head_dim;
             c.n_kv_heads = n_kv_heads;
             c.k = k;
             c.l = l;
             c.min_collisions = min_collisions;
             c.sinks = sinks;
             c.window = window;
             c.chunk = chunk;
             c.max_sampled = max_sampled;
             c.bf16 = bf16;
             c.seed = seed;
             int64_t D = 1;
             while (D < head_dim) D <<= 1;
             if (signs.shape(1) != D || signs.shape(0) < 3)
               throw std::invalid_argument("signs: expected shape (n_rot + 2, next power of two >= head_dim)");
             return new LSHAttentionIndex(c, signs.data(), signs.shape(0) - 2);
           }),
           py::arg("head_dim"), py::arg("n_kv_heads"), py::arg("k"), py::arg("l"), py::arg("min_collisions"),
           py::arg("sinks"), py::arg("window"), py::arg("chunk"), py::arg("max_sampled"), py::arg("bf16"),
           py::arg("seed"), py::arg("signs"))
      .def(
          "append",
          [](LSHAttentionIndex& self, const py::array& keys, const py::array& values) {
            const auto& c = self.config();
            bool bf16 = false;
            require_kv(keys, values, c.n_kv_heads, c.head_dim, bf16);
            if (bf16 != c.bf16)
              throw py::type_error(std::string("keys: expected ") + (c.bf16 ? "uint16 (bfloat16 bits)" : "float32"));
            const void* pk = keys.data();
            const void* pv = values.data();
            const int64_t t = keys.shape(1);
            py::gil_scoped_release nogil;
            self.append(pk, pv, t);
          },
          py::arg("keys"), py::arg("values"))
      .def(
          "attend",
          [](LSHAttentionIndex& self, const carray<float>& Q, float scale) {
            require_shape(Q, "queries", {-1, self.config().head_dim});
            const int64_t H = Q.shape(0), d = Q.shape(1);
            carray<float> out({H, d}), lse(H);
            py::array_t<int64_t> touched(H);
            {
              py::gil_scoped_release nogil;
              self.attend(Q.data(), H, scale, out.mutable_data(), lse.mutable_data(), touched.mutable_data());
            }
            return py::make_tuple(out, lse, touched);
          },
          py::arg("queries"), py::arg("scale"))
      .def("__len__", &LSHAttentionIndex::size)
      .def("set_min_collisions", &LSHAttentionIndex::set_min_collisions, py::arg("min_collisions"))
      .def_property_readonly("n_indexed", &LSHAttentionIndex::n_indexed)
      .def_property_readonly("n_segments", &LSHAttentionIndex::n_segments)
      .def_property_readonly("nbytes", &LSHAttentionIndex::nbytes)
      .def_property_readonly("kv_nbytes", &LSHAttentionIndex::kv_nbytes)
      .def_property_readonly("build_seconds",
                             [](const LSHAttentionIndex& self) {
                               double h = 0, t = 0;
                               self.build_seconds(&h, &t);
                               return py::make_tuple(h, t);
                             })
      .def("key_mean",
           [](const LSHAttentionIndex& self) {
             const auto& c = self.config();
             carray<float> out({c.n_kv_heads, c.head_dim});
             self.key_mean(out.mutable_data());
             return out;
           })
      .def(
          "indexed_codes",
          [](const LSHAttentionIndex& self, int64_t head) {
            carray<uint32_t> out({self.n_indexed(), (int64_t)self.config().l});
            {
              py::gil_scoped_release nogil;
              self.indexed_codes(head, out.mutable_data());
            }
            return out;
          },
          py::arg("head"));

  m.def(
      "dense_attention",
      [](const carray<float>& Q, const py::array& K, const py::array& V, float scale) {
        require_shape(Q, "queries", {-1, -1});
        const int64_t H = Q.shape(0), d = Q.shape(1);
        if (K.ndim() != 3) throw std::invalid_argument("keys: expected shape (n_kv_heads, n, head_dim)");
        bool bf16 = false;
        require_kv(K, V, K.shape(0), d, bf16);
        carray<float> out({H, d}), lse(H);
        {
          py::gil_scoped_release nogil;
          dense_attention(Q.data(), H, K.data(), V.data(), bf16, K.shape(0), K.shape(1), d, scale,
                          out.mutable_data(), lse.mutable_data());
        }
        return py::make_tuple(out, lse);
      },
      py::arg("queries"), py::arg("keys"), py::arg("values"), py::arg("scale"));

  m.def(
      "topk_attention",
      [](const carray<float>& Q, const py::array& K, const py::array& V, const carray<int64_t>& budget, float scale) {
        require_shape(Q, "queries", {-1, -1});
        const int64_t H = Q.shape(0), d = Q.shape(1);
        if (K.ndim() != 3) throw std::invalid_argument("keys: expected shape (n_kv_heads, n, head_dim)");
        bool bf16 = false;
        require_kv(K, V, K.shape(0), d, bf16);
        require_shape(budget, "budget", {H});
        carray<float> out({H, d}), lse(H);
        {
          py::gil_scoped_release nogil;
          topk_attention(Q.data(), H, K.data(), V.data(), bf16, K.shape(0), K.shape(1), d, budget.data(), scale,
                         out.mutable_data(), lse.mutable_data());
        }
        return py::make_tuple(out, lse);
      },
      py::arg("queries"), py::arg("keys"), py::arg("values"), py::arg("budget"), py::arg("scale"));

  m.def(
      "attention_sampling_prob",
      [](const carray<float>& cosv, int k, int l, int min_collisions) {
        require_shape(cosv, "cos", {-1});
        const int64_t n = cosv.shape(0);
        carray<float> p(n), u(n);
        attention_sampling_prob(cosv.data(), n, k, l, min_collisions, p.mutable_data(), u.mutable_data());
        return py::make_tuple(p, u);
      },
      py::arg("cos"), py::arg("k"), py::arg("l"), py::arg("min_collisions"));

  m.def("log_binom_sf", &log_binom_sf, py::arg("m"), py::arg("l"), py::arg("p"),
        "log P[Binomial(l, p) >= m] in double precision.");
}

}  // namespace hashlab
