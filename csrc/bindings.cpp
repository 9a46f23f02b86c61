// The one pybind11 module afd_trt._C: each op file registers its own functions.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_nms(py::module_& m);
void register_detection_post(py::module_& m);
void register_roi_align(py::module_& m);
void register_warp_affine(py::module_& m);
void register_heatmap_decode(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "afd_trt native ops (numpy in, numpy out; the GIL is released while computing)";
  m.attr("__version__") = AFD_TRT_VERSION;
  register_nms(m);
  register_detection_post(m);
  register_roi_align(m);
  register_warp_affine(m);
  register_heatmap_decode(m);
}
