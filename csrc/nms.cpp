// ops.nms: torchvision.ops.nms, and mmcv batched_nms when group ids are given.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstring>

#include "box_utils.h"
#include "common.h"

namespace py = pybind11;

namespace {

py::array_t<int64_t> nms(const py::object& boxes_obj, const py::object& scores_obj, double iou_threshold,
                         const py::object& idxs_obj) {
  auto boxes = afd::expect_array<float>(boxes_obj, "boxes");
  auto scores = afd::expect_array<float>(scores_obj, "scores");
  afd::expect_ndim(boxes, 2, "boxes");
  if (boxes.shape(1) != 4) afd::fail("boxes must have shape (N, 4), got ", afd::shape_str(boxes));
  afd::expect_ndim(scores, 1, "scores");
  const int64_t n = boxes.shape(0);
  if (scores.shape(0) != n) {
    afd::fail("scores must have shape (N,) with N = boxes.shape[0] = ", n, ", got ", afd::shape_str(scores));
  }
  if (!(iou_threshold >= 0.0 && iou_threshold <= 1.0)) {
    afd::fail("iou_threshold must be in [0, 1], got ", iou_threshold);
  }
  py::array_t<int64_t, py::array::c_style> idxs;
  const bool batched = !idxs_obj.is_none();
  if (batched) {
    idxs = afd::expect_array<int64_t>(idxs_obj, "idxs");
    afd::expect_ndim(idxs, 1, "idxs");
    if (idxs.shape(0) != n) {
      afd::fail("idxs must have shape (N,) with N = boxes.shape[0] = ", n, ", got ", afd::shape_str(idxs));
    }
  }
  if (n == 0) return py::array_t<int64_t>(0);

  std::vector<int64_t> keep;
  {
    py::gil_scoped_release release;
    keep = batched ? afd::det::batched_nms(boxes.data(), scores.data(), idxs.data(), n, iou_threshold)
                   : afd::det::greedy_nms(boxes.data(), scores.data(), n, iou_threshold);
  }
  py::array_t<int64_t> out(static_cast<py::ssize_t>(keep.size()));
  if (!keep.empty()) std::memcpy(out.mutable_data(), keep.data(), keep.size() * sizeof(int64_t));
  return out;
}

}  // namespace

void register_nms(py::module_& m) {
  m.def("nms", &nms, py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"),
        py::arg("idxs") = py::none(),
        R"doc(Greedy non-maximum suppression (torchvision.ops.nms semantics).

boxes: float32 (N, 4) as (x1, y1, x2, y2); scores: float32 (N,); iou_threshold in [0, 1]:
a box is dropped when its IoU with a kept higher-scoring box is > iou_threshold.
idxs: optional int64 (N,) group ids; boxes of different groups never suppress each other
(mmcv batched_nms: boxes are shifted by idx * (max coordinate + 1) in float32).
Returns int64 (K,) indices into the input, by decreasing score (ties keep input order).)doc");
}
