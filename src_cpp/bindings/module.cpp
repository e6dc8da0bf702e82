#include "bindings.h"
#include "dispatch.h"
#include "hashlab/threads.h"

namespace hashlab {
namespace {

PYBIND11_MODULE(_C, m) {
  m.doc() = "hashlab's C++ core (see src_cpp/); use the Python API in hashlab.*";
  m.def("simd_level", [] { return std::string(simd_name(simd_level())); },
        "SIMD level in use: 'avx512bf16', 'avx512', 'avx2' or 'scalar'.");
  m.def("simd_supported", [](const std::string& name) {
    if (name == "avx512bf16") return simd_supported(Simd::avx512bf16);
    if (name == "avx512") return simd_supported(Simd::avx512);
    if (name == "avx2") return simd_supported(Simd::avx2);
    if (name == "scalar") return true;
    throw std::invalid_argument("simd level: expected 'avx512bf16', 'avx512', 'avx2' or 'scalar', got '" + name +
                                "'");
  });
  m.def("set_simd_level", [](const std::string& name) { set_simd_level(name.c_str()); });
  m.def("simd_forced", [] { return simd_forced(); });
  m.def("simd_levels", [] {
    py::dict d;
    for (int k = 0; k < (int)Kernel::count; ++k) d[kernel_name((Kernel)k)] = simd_name(simd_level((Kernel)k));
    return d;
  });
  m.def("set_num_threads", &set_num_threads);
  m.def("get_num_threads", &get_num_threads);
  bind_simhash(m);
  bind_wta(m);
  bind_tables(m);
  bind_sparse_layer(m);
  bind_attention(m);
}

}  // namespace
}  // namespace hashlab
