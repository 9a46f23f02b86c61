// Detector post-processing for ONE image, fused in C++ (numpy in, numpy out):
//   yolo_postprocess : mmdet YOLOV3Head.get_bboxes + multiclass_nms (rescale=True)
//   rpn_proposals    : mmdet RPNHead._get_bboxes_single + _bbox_post_process
//   rcnn_postprocess : mmdet BBoxHead.get_bboxes + multiclass_nms (rescale=True)
// Arithmetic is float32 in upstream's order (see box_utils.h); thresholds are compared in
// float32 like torch compares a float32 tensor with a Python float.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "box_utils.h"
#include "common.h"
#include "level_list.h"

namespace py = pybind11;
using afd::det::sigmoid;

namespace {

using FArray = py::array_t<float, py::array::c_style>;


void expect_len(size_t got, size_t want, const char* name, const char* what) {
  if (got != want) afd::fail(name, " must have ", want, " entries (", what, "), got ", got);
}

void expect_threshold(double v, const char* name) {
  if (!(std::isfinite(v) && v >= 0.0)) afd::fail(name, " must be a finite number >= 0, got ", v);
}

void expect_iou(double v, const char* name) {
  if (!(v >= 0.0 && v <= 1.0)) afd::fail(name, " must be in [0, 1], got ", v);
}

void expect_positive_count(int64_t v, const char* name) {
  if (v < 1) afd::fail(name, " must be >= 1, got ", v);
}

std::vector<float> expect_scale_factor(const py::object& obj) {
  auto sf = afd::expect_array<float>(obj, "scale_factor");
  afd::expect_ndim(sf, 1, "scale_factor");
  if (sf.shape(0) != 4) afd::fail("scale_factor must have shape (4,), got ", afd::shape_str(sf));
  std::vector<float> v(sf.data(), sf.data() + 4);
  for (int j = 0; j < 4; ++j) {
    if (!(std::isfinite(v[j]) && v[j] > 0.0f)) afd::fail("scale_factor[", j, "] must be finite and > 0, got ", v[j]);
  }
  return v;
}

std::pair<int64_t, int64_t> expect_img_shape(const std::vector<int64_t>& img_shape) {
  expect_len(img_shape.size(), 2, "img_shape", "(height, width)");
  if (img_shape[0] < 1 || img_shape[1] < 1) {
    afd::fail("img_shape must be positive (height, width), got (", img_shape[0], ", ", img_shape[1], ")");
  }
  return {img_shape[0], img_shape[1]};
}

afd::det::DeltaCoder make_coder(const std::vector<double>& means, const std::vector<double>& stds,
                                std::pair<int64_t, int64_t> img_shape) {
  expect_len(means.size(), 4, "target_means", "dx, dy, dw, dh");
  expect_len(stds.size(), 4, "target_stds", "dx, dy, dw, dh");
  afd::det::DeltaCoder c{};
  for (int j = 0; j < 4; ++j) {
    if (!std::isfinite(means[j])) afd::fail("target_means[", j, "] must be finite, got ", means[j]);
    if (!(std::isfinite(stds[j]) && stds[j] > 0.0)) afd::fail("target_stds[", j, "] must be finite and > 0, got ", stds[j]);
    c.means[j] = static_cast<float>(means[j]);
    c.stds[j] = static_cast<float>(stds[j]);
  }
  c.max_ratio = afd::det::default_max_ratio();
  c.max_h = static_cast<float>(img_shape.first);
  c.max_w = static_cast<float>(img_shape.second);
  return c;
}

// Candidate boxes before NMS, in upstream's candidate order.
struct Candidates {
  std::vector<float> boxes;  // n x 4
  std::vector<float> scores;
  std::vector<int64_t> groups;  // NMS group (class or level) of each candidate

  void push(const float* b, float score, int64_t group) {
    boxes.insert(boxes.end(), b, b + 4);
    scores.push_back(score);
    groups.push_back(group);
  }
  int64_t size() const { return static_cast<int64_t>(scores.size()); }
};

// mmcv batched_nms on the candidates, first max_per_img kept, as (K, 5) [x1, y1, x2, y2, score].
py::array_t<float> nms_to_dets(const Candidates& cand, double nms_iou, int64_t max_per_img) {
  std::vector<int64_t> keep;
  {
    py::gil_scoped_release release;
    keep = afd::det::batched_nms(cand.boxes.data(), cand.scores.data(), cand.groups.data(), cand.size(), nms_iou,
                                 max_per_img);
  }
  const auto k = static_cast<py::ssize_t>(keep.size());
  py::array_t<float> out({k, static_cast<py::ssize_t>(5)});
  float* o = out.mutable_data();
  for (py::ssize_t r = 0; r < k; ++r) {
    const int64_t i = keep[static_cast<size_t>(r)];
    std::memcpy(o + r * 5, cand.boxes.data() + i * 4, 4 * sizeof(float));
    o[r * 5 + 4] = cand.scores[static_cast<size_t>(i)];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// YOLOv3
// ---------------------------------------------------------------------------------------------

py::array_t<float> yolo_postprocess(const py::object& pred_maps_obj, const std::vector<int64_t>& strides,
                                    const py::object& base_sizes_obj, const py::object& scale_factor_obj,
                                    double conf_thr, double score_thr, double nms_iou, int64_t max_per_img) {
  const auto maps = afd::expect_level_list(pred_maps_obj, "pred_maps", 3);
  const size_t levels = maps.size();
  expect_len(strides.size(), levels, "strides", "one per pred_maps level");
  for (size_t l = 0; l < levels; ++l) {
    if (strides[l] < 1) afd::fail("strides[", l, "] must be >= 1, got ", strides[l]);
  }
  auto base_sizes = afd::expect_array<float>(base_sizes_obj, "base_sizes");
  afd::expect_ndim(base_sizes, 3, "base_sizes");
  if (base_sizes.shape(0) != static_cast<py::ssize_t>(levels) || base_sizes.shape(2) != 2 || base_sizes.shape(1) < 1) {
    afd::fail("base_sizes must have shape (L, A, 2) with L = len(pred_maps) = ", levels, ", got ",
              afd::shape_str(base_sizes));
  }
  const int64_t num_anchors = base_sizes.shape(1);
  for (py::ssize_t i = 0; i < base_sizes.size(); ++i) {
    const float v = base_sizes.data()[i];
    if (!(std::isfinite(v) && v > 0.0f)) {
      afd::fail("base_sizes[", i / (2 * num_anchors), ", ", (i / 2) % num_anchors, ", ", i % 2,
                "] must be finite and > 0, got ", v);
    }
  }
  for (size_t l = 0; l < levels; ++l) {
    const int64_t ch = maps[l].shape(0);
    if (ch % num_anchors != 0 || ch / num_anchors < 6) {
      afd::fail("pred_maps[", l, "] must have A * (5 + num_classes) channels with A = ", num_anchors,
                ", got shape ", afd::shape_str(maps[l]));
    }
    if (ch / num_anchors != 6) {
      afd::fail("pred_maps[", l, "] has ", ch / num_anchors - 5, " classes per anchor; only num_classes = 1 is supported");
    }
  }
  const std::vector<float> sf = expect_scale_factor(scale_factor_obj);
  expect_threshold(conf_thr, "conf_thr");
  expect_threshold(score_thr, "score_thr");
  expect_iou(nms_iou, "nms_iou");
  expect_positive_count(max_per_img, "max_per_img");

  const float conf_f = static_cast<float>(conf_thr);
  const float score_f = static_cast<float>(score_thr);
  Candidates cand;
  {
    py::gil_scoped_release release;
    for (size_t l = 0; l < levels; ++l) {
      const int64_t h = maps[l].shape(1), w = maps[l].shape(2), hw = h * w;
      const float* pred = maps[l].data();
      const double stride = static_cast<double>(strides[l]);
      const float stride_f = static_cast<float>(strides[l]);
      // YOLOAnchorGenerator: centre stride / 2, anchor (w, h) -> [c - w/2, c - h/2, c + w/2, c + h/2]
      // computed in double and stored as float32 (torch.Tensor of Python floats).
      std::vector<float> base(static_cast<size_t>(num_anchors) * 4);
      for (int64_t a = 0; a < num_anchors; ++a) {
        const float* size = base_sizes.data() + (static_cast<int64_t>(l) * num_anchors + a) * 2;
        const double bw = size[0], bh = size[1], c = stride / 2.0;
        base[a * 4 + 0] = static_cast<float>(c - 0.5 * bw);
        base[a * 4 + 1] = static_cast<float>(c - 0.5 * bh);
        base[a * 4 + 2] = static_cast<float>(c + 0.5 * bw);
        base[a * 4 + 3] = static_cast<float>(c + 0.5 * bh);
      }
      for (int64_t y = 0; y < h; ++y) {
        const float shift_y = static_cast<float>(y) * stride_f;
        for (int64_t x = 0; x < w; ++x) {
          const float shift_x = static_cast<float>(x) * stride_f;
          const int64_t pos = y * w + x;
          for (int64_t a = 0; a < num_anchors; ++a) {
            const float* p = pred + a * 6 * hw + pos;  // attribute j at p[j * hw]
            const float objectness = sigmoid(p[4 * hw]);
            if (conf_thr > 0.0 && !(objectness >= conf_f)) continue;
            const float cls = sigmoid(p[5 * hw]);
            if (!(cls > score_f)) continue;
            const float ax1 = base[a * 4 + 0] + shift_x, ay1 = base[a * 4 + 1] + shift_y;
            const float ax2 = base[a * 4 + 2] + shift_x, ay2 = base[a * 4 + 3] + shift_y;
            // YOLOBBoxCoder.decode
            const float cx = (ax1 + ax2) * 0.5f + (sigmoid(p[0]) - 0.5f) * stride_f;
            const float cy = (ay1 + ay2) * 0.5f + (sigmoid(p[hw]) - 0.5f) * stride_f;
            const float half_w = (ax2 - ax1) * 0.5f * std::exp(p[2 * hw]);
            const float half_h = (ay2 - ay1) * 0.5f * std::exp(p[3 * hw]);
            // rescale=True: back to original-image pixels before NMS
            const float box[4] = {(cx - half_w) / sf[0], (cy - half_h) / sf[1], (cx + half_w) / sf[2],
                                  (cy + half_h) / sf[3]};
            cand.push(box, cls * objectness, 0);
          }
        }
      }
    }
  }
  return nms_to_dets(cand, nms_iou, max_per_img);
}

// ---------------------------------------------------------------------------------------------
// RPN
// ---------------------------------------------------------------------------------------------

py::array_t<float> rpn_proposals(const py::object& cls_scores_obj, const py::object& bbox_preds_obj,
                                 const std::vector<int64_t>& strides, const std::vector<double>& ratios,
                                 const std::vector<double>& scales, const std::vector<int64_t>& img_shape_v,
                                 int64_t nms_pre, double nms_iou, int64_t max_per_img, double min_bbox_size,
                                 const std::vector<double>& target_means, const std::vector<double>& target_stds) {
  const auto cls_maps = afd::expect_level_list(cls_scores_obj, "cls_scores", 3);
  const auto reg_maps = afd::expect_level_list(bbox_preds_obj, "bbox_preds", 3);
  const size_t levels = cls_maps.size();
  expect_len(reg_maps.size(), levels, "bbox_preds", "one per cls_scores level");
  expect_len(strides.size(), levels, "strides", "one per cls_scores level");
  if (ratios.empty()) afd::fail("ratios must not be empty");
  if (scales.empty()) afd::fail("scales must not be empty");
  for (size_t i = 0; i < ratios.size(); ++i) {
    if (!(std::isfinite(ratios[i]) && ratios[i] > 0.0)) afd::fail("ratios[", i, "] must be finite and > 0, got ", ratios[i]);
  }
  for (size_t i = 0; i < scales.size(); ++i) {
    if (!(std::isfinite(scales[i]) && scales[i] > 0.0)) afd::fail("scales[", i, "] must be finite and > 0, got ", scales[i]);
  }
  const int64_t num_anchors = static_cast<int64_t>(ratios.size() * scales.size());
  for (size_t l = 0; l < levels; ++l) {
    if (strides[l] < 1) afd::fail("strides[", l, "] must be >= 1, got ", strides[l]);
    if (cls_maps[l].shape(0) != num_anchors) {
      afd::fail("cls_scores[", l, "] must have A = len(ratios) * len(scales) = ", num_anchors, " channels, got shape ",
                afd::shape_str(cls_maps[l]));
    }
    if (reg_maps[l].shape(0) != 4 * num_anchors || reg_maps[l].shape(1) != cls_maps[l].shape(1) ||
        reg_maps[l].shape(2) != cls_maps[l].shape(2)) {
      afd::fail("bbox_preds[", l, "] must have shape (", 4 * num_anchors, ", ", cls_maps[l].shape(1), ", ",
                cls_maps[l].shape(2), "), got ", afd::shape_str(reg_maps[l]));
    }
  }
  const auto img_shape = expect_img_shape(img_shape_v);
  expect_positive_count(nms_pre, "nms_pre");
  expect_iou(nms_iou, "nms_iou");
  expect_positive_count(max_per_img, "max_per_img");
  if (std::isnan(min_bbox_size) || std::isinf(min_bbox_size)) {
    afd::fail("min_bbox_size must be finite (negative disables the size filter), got ", min_bbox_size);
  }
  const afd::det::DeltaCoder coder = make_coder(target_means, target_stds, img_shape);

  // AnchorGenerator base anchors (scale_major, center_offset 0, base size = stride), float32:
  // h_ratio = sqrt(ratio), w_ratio = 1 / h_ratio, ws = stride * w_ratio * scale.
  std::vector<float> half_w(static_cast<size_t>(num_anchors)), half_h(static_cast<size_t>(num_anchors));
  Candidates cand;
  {
    py::gil_scoped_release release;
    for (size_t l = 0; l < levels; ++l) {
      const float base = static_cast<float>(strides[l]);
      for (size_t r = 0; r < ratios.size(); ++r) {
        const float h_ratio = std::sqrt(static_cast<float>(ratios[r]));
        const float w_ratio = 1.0f / h_ratio;
        for (size_t s = 0; s < scales.size(); ++s) {
          const size_t a = r * scales.size() + s;
          half_w[a] = 0.5f * (base * w_ratio * static_cast<float>(scales[s]));
          half_h[a] = 0.5f * (base * h_ratio * static_cast<float>(scales[s]));
        }
      }
      const int64_t h = cls_maps[l].shape(1), w = cls_maps[l].shape(2), hw = h * w;
      const int64_t n = hw * num_anchors;
      const float* cls = cls_maps[l].data();
      const float* reg = reg_maps[l].data();
      // Scores flattened in (y, x, anchor) order.
      std::vector<float> scores(static_cast<size_t>(n));
      for (int64_t pos = 0; pos < hw; ++pos) {
        for (int64_t a = 0; a < num_anchors; ++a) scores[pos * num_anchors + a] = sigmoid(cls[a * hw + pos]);
      }
      std::vector<int64_t> selected;
      if (nms_pre < n) {
        selected = afd::det::stable_topk_desc(scores.data(), n, nms_pre);
      } else {
        selected.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) selected[i] = i;
      }
      for (const int64_t k : selected) {
        const int64_t a = k % num_anchors, pos = k / num_anchors;
        const float sx = static_cast<float>(pos % w) * base, sy = static_cast<float>(pos / w) * base;
        const float anchor[4] = {-half_w[a] + sx, -half_h[a] + sy, half_w[a] + sx, half_h[a] + sy};
        const float delta[4] = {reg[(a * 4 + 0) * hw + pos], reg[(a * 4 + 1) * hw + pos], reg[(a * 4 + 2) * hw + pos],
                                reg[(a * 4 + 3) * hw + pos]};
        float box[4];
        coder.decode(anchor, delta, box);
        if (min_bbox_size >= 0.0) {
          const float min_size = static_cast<float>(min_bbox_size);
          if (!((box[2] - box[0]) > min_size && (box[3] - box[1]) > min_size)) continue;
        }
        cand.push(box, scores[k], static_cast<int64_t>(l));
      }
    }
  }
  return nms_to_dets(cand, nms_iou, max_per_img);
}

// ---------------------------------------------------------------------------------------------
// R-CNN box head
// ---------------------------------------------------------------------------------------------

py::array_t<float> rcnn_postprocess(const py::object& rois_obj, const py::object& cls_score_obj,
                                    const py::object& bbox_pred_obj, const std::vector<int64_t>& img_shape_v,
                                    const py::object& scale_factor_obj, const std::vector<double>& target_means,
                                    const std::vector<double>& target_stds, double score_thr, double nms_iou,
                                    int64_t max_per_img) {
  auto rois = afd::expect_array<float>(rois_obj, "rois");
  auto cls_score = afd::expect_array<float>(cls_score_obj, "cls_score");
  auto bbox_pred = afd::expect_array<float>(bbox_pred_obj, "bbox_pred");
  afd::expect_ndim(rois, 2, "rois");
  afd::expect_ndim(cls_score, 2, "cls_score");
  afd::expect_ndim(bbox_pred, 2, "bbox_pred");
  const int64_t k = rois.shape(0);
  if (rois.shape(1) != 4) afd::fail("rois must have shape (K, 4), got ", afd::shape_str(rois));
  if (cls_score.shape(0) != k || cls_score.shape(1) != 2) {
    afd::fail("cls_score must have shape (K, num_classes + 1) = (", k,
              ", 2): only num_classes = 1 is supported, got ", afd::shape_str(cls_score));
  }
  if (bbox_pred.shape(0) != k || bbox_pred.shape(1) != 4) {
    afd::fail("bbox_pred must have shape (K, 4 * num_classes) = (", k, ", 4), got ", afd::shape_str(bbox_pred));
  }
  const auto img_shape = expect_img_shape(img_shape_v);
  const std::vector<float> sf = expect_scale_factor(scale_factor_obj);
  const afd::det::DeltaCoder coder = make_coder(target_means, target_stds, img_shape);
  expect_threshold(score_thr, "score_thr");
  expect_iou(nms_iou, "nms_iou");
  expect_positive_count(max_per_img, "max_per_img");

  const float score_f = static_cast<float>(score_thr);
  Candidates cand;
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < k; ++i) {
      // softmax over (face, background) like torch: exp(x - max) * (1 / sum)
      const float* logit = cls_score.data() + i * 2;
      const float m = std::max(logit[0], logit[1]);
      const float e0 = std::exp(logit[0] - m), e1 = std::exp(logit[1] - m);
      const float prob = e0 * (1.0f / (e0 + e1));
      if (!(prob > score_f)) continue;
      float box[4];
      coder.decode(rois.data() + i * 4, bbox_pred.data() + i * 4, box);
      for (int j = 0; j < 4; ++j) box[j] = box[j] / sf[j];
      cand.push(box, prob, 0);
    }
  }
  return nms_to_dets(cand, nms_iou, max_per_img);
}

}  // namespace

void register_detection_post(py::module_& m) {
  m.def("yolo_postprocess", &yolo_postprocess, py::arg("pred_maps"), py::arg("strides"), py::arg("base_sizes"),
        py::arg("scale_factor"), py::arg("conf_thr"), py::arg("score_thr"), py::arg("nms_iou"),
        py::arg("max_per_img"),
        "YOLOv3 decode + objectness/class filter + NMS for one image; returns float32 (K, 5) boxes in "
        "original-image pixels with scores.");
  m.def("rpn_proposals", &rpn_proposals, py::arg("cls_scores"), py::arg("bbox_preds"), py::arg("strides"),
        py::arg("ratios"), py::arg("scales"), py::arg("img_shape"), py::arg("nms_pre"), py::arg("nms_iou"),
        py::arg("max_per_img"), py::arg("min_bbox_size"), py::arg("target_means"), py::arg("target_stds"),
        "RPN proposals for one image (per-level top-k, delta decode, size filter, per-level NMS); returns "
        "float32 (K, 5) boxes in resized-image pixels with sigmoid scores.");
  m.def("rcnn_postprocess", &rcnn_postprocess, py::arg("rois"), py::arg("cls_score"), py::arg("bbox_pred"),
        py::arg("img_shape"), py::arg("scale_factor"), py::arg("target_means"), py::arg("target_stds"),
        py::arg("score_thr"), py::arg("nms_iou"), py::arg("max_per_img"),
        "Faster R-CNN box head post-processing for one image (softmax, decode, rescale, NMS); returns "
        "float32 (M, 5) boxes in original-image pixels with scores.");
}
