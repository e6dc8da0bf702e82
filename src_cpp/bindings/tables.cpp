// hashlab._C.LSHTables: the C++ LSH tables (src_cpp/tables*.cpp) for hashlab/tables.py.
// Arrays are checked here for shape; the core checks values. The GIL is released
// around every core call, so Python threads can insert and query concurrently.
#include <utility>
#include <vector>

#include "bindings.h"
#include "hashlab/tables.h"

namespace hashlab {
namespace {

// Moves a vector into a 1-D numpy array without copying its data.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  if (v.empty()) return py::array_t<T>(0);
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule cap(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>((py::ssize_t)owner->size(), owner->data(), cap);
}

// The core with its table count, so that key shapes are checked against the index's
// own l rather than a caller-supplied one.
struct Tables {
  int l;
  LSHTablesCore core;
  Tables(int l_, int key_bits, int range_bits, int capacity, Policy policy, uint64_t seed)
      : l(l_), core(l_, key_bits, range_bits, capacity, policy, seed) {}
};

Policy policy_from(const std::string& name) {
  if (name == "fifo") return Policy::fifo;
  if (name == "reservoir") return Policy::reservoir;
  throw std::invalid_argument("policy: expected 'fifo' or 'reservoir', got '" + name + "'");
}

}  // namespace

void bind_tables(py::module_& m) {
  py::class_<Tables>(m, "LSHTables", "L hash tables over uint32 keys (use hashlab.tables.LSHTables).")
      .def(py::init([](int l, int key_bits, int range_bits, int capacity, const std::string& policy,
                       uint64_t seed) {
             return new Tables(l, key_bits, range_bits, capacity, policy_from(policy), seed);
           }),
           py::arg("l"), py::arg("key_bits"), py::arg("range_bits"), py::arg("capacity"),
           py::arg("policy"), py::arg("seed"))
      .def(
          "insert",
          [](Tables& self, const carray<int32_t>& ids, const carray<uint32_t>& keys) {
            require_shape(ids, "ids", {-1});
            require_shape(keys, "keys", {ids.shape(0), self.l});
            const int32_t* pi = ids.data();
            const uint32_t* pk = keys.data();
            int64_t n = ids.shape(0);
            py::gil_scoped_release nogil;
            self.core.insert(pi, pk, n);
          },
          py::arg("ids"), py::arg("keys"), "ids (n,) int32, keys (n, l) uint32.")
      .def(
          "remove",
          [](Tables& self, const carray<int32_t>& ids) {
            require_shape(ids, "ids", {-1});
            const int32_t* pi = ids.data();
            int64_t n = ids.shape(0);
            py::gil_scoped_release nogil;
            return self.core.remove(pi, n);
          },
          py::arg("ids"))
      .def(
          "clear",
          [](Tables& self) {
            py::gil_scoped_release nogil;
            self.core.clear();
          })
      .def(
          "query",
          [](const Tables& self, const carray<uint32_t>& keys, int min_collisions, int64_t max_candidates) {
            require_shape(keys, "keys", {-1, self.l});
            const uint32_t* pk = keys.data();
            int64_t nq = keys.shape(0);
            QueryResult r;
            {
              py::gil_scoped_release nogil;
              r = self.core.query(pk, nq, min_collisions, max_candidates);
            }
            return py::make_tuple(to_numpy(std::move(r.indptr)), to_numpy(std::move(r.ids)),
                                  to_numpy(std::move(r.counts)));
          },
          py::arg("keys"), py::arg("min_collisions"), py::arg("max_candidates"),
          "keys (nq, l) uint32 -> (indptr int64 (nq+1), ids int32, counts int32).")
      .def("freeze",
           [](Tables& self) {
             py::gil_scoped_release nogil;
             self.core.freeze();
           })
      .def("thaw",
           [](Tables& self) {
             py::gil_scoped_release nogil;
             self.core.thaw();
           })
      // these take the index's lock: release the GIL while waiting for a long insert
      .def_readonly("l", &Tables::l)
      .def_property_readonly("frozen", [](const Tables& self) {
        py::gil_scoped_release nogil;
        return self.core.frozen();
      })
      .def("size", [](const Tables& self) {
        py::gil_scoped_release nogil;
        return self.core.size();
      })
      .def("nbytes", [](const Tables& self) {
        py::gil_scoped_release nogil;
        return self.core.nbytes() + (int64_t)sizeof(Tables);
      })
      .def("stats", [](const Tables& self) {
        TableStats st;
        {
          py::gil_scoped_release nogil;
          st = self.core.stats();
        }
        py::dict d;
        d["size_histogram"] = to_numpy(std::move(st.size_histogram));
        d["full_buckets"] = st.full_buckets;
        d["stored"] = st.stored;
        d["dropped"] = st.dropped;
        return d;
      });
}

}  // namespace hashlab
