// The files in src_cpp/bindings/ are the only ones that include pybind11.
// Each binds one concept; module.cpp assembles hashlab._C.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace hashlab {
namespace py = pybind11;

void bind_simhash(py::module_& m);
void bind_wta(py::module_& m);
void bind_tables(py::module_& m);
void bind_sparse_layer(py::module_& m);
void bind_attention(py::module_& m);

// Checks an array argument's shape; raises ValueError naming it.
template <typename A>
void require_shape(const A& a, const char* name, std::initializer_list<py::ssize_t> shape) {
  bool ok = a.ndim() == (py::ssize_t)shape.size();
  py::ssize_t i = 0;
  for (auto s : shape) {
    if (!ok) break;
    if (s >= 0 && a.shape(i) != s) ok = false;
    ++i;
  }
  if (!ok) {
    std::string want = "(";
    i = 0;
    for (auto s : shape) want += (i++ ? ", " : "") + (s < 0 ? std::string("*") : std::to_string(s));
    std::string got = "(";
    for (py::ssize_t j = 0; j < a.ndim(); ++j) got += (j ? ", " : "") + std::to_string(a.shape(j));
    throw std::invalid_argument(std::string(name) + ": expected shape " + want + "), got " + got + ")");
  }
}

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

}  // namespace hashlab
