// Validation of per-feature-level array lists (YOLO pred maps, RPN outputs, FPN features).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "common.h"

namespace afd {

// A non-empty Python sequence (list, tuple, ...; not a str or an ndarray, which would silently
// iterate over their first axis) of float32 C-contiguous arrays of the given ndim.
// Element errors name the element, e.g. "pred_maps[1] must be 3-D ...".
inline std::vector<py::array_t<float, py::array::c_style>> expect_level_list(const py::object& obj, const char* name,
                                                                           py::ssize_t ndim) {
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj) || py::isinstance<py::bytes>(obj) ||
      py::isinstance<py::array>(obj)) {
    fail(name, " must be a sequence of numpy arrays (one per feature level), got ",
         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  const auto seq = py::reinterpret_borrow<py::sequence>(obj);
  std::vector<py::array_t<float, py::array::c_style>> out;
  for (size_t i = 0; i < seq.size(); ++i) {
    const std::string item = cat(name, "[", i, "]");
    auto arr = expect_array<float>(seq[i], item.c_str());
    expect_ndim(arr, ndim, item.c_str());
    out.push_back(arr);
  }
  if (out.empty()) fail(name, " must hold at least one feature level, got an empty sequence");
  return out;
}

}  // namespace afd
