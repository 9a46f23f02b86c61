// Box helpers shared by the detection ops (nms.cpp, detection_post.cpp).
//
// Boxes are (x1, y1, x2, y2) float32, stored row-major as N x 4. Every formula is written in
// float32 in the same operation order as the PyTorch code it reproduces (torchvision's CPU NMS,
// mmcv's batched_nms offset trick, mmdet's DeltaXYWHBBoxCoder), so rounding matches upstream.
// No FMA contraction happens: the build uses portable flags only (no -march=native).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace afd::det {

// Descending score order as torch sorts it: NaN first, then larger before smaller.
inline bool score_before(float a, float b) {
  if (std::isnan(a)) return !std::isnan(b);
  return a > b;
}

// Indices of scores[0..n) sorted by score_before; equal scores keep their input order.
// torchvision's CPU nms sorts stably, so this reproduces its order exactly. torch.sort (used by
// mmdet's RPN top-k) is unstable on CPU and may order exact ties differently.
inline std::vector<int64_t> stable_order_desc(const float* scores, int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [scores](int64_t i, int64_t j) { return score_before(scores[i], scores[j]); });
  return order;
}

// The first k entries of stable_order_desc(scores, n), without sorting all n: select the k-th
// best score, gather everything better plus the earliest equal ones (index order), sort those.
inline std::vector<int64_t> stable_topk_desc(const float* scores, int64_t n, int64_t k) {
  if (k >= n) return stable_order_desc(scores, n);
  if (k <= 0) return {};
  std::vector<float> tmp(scores, scores + n);
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), score_before);
  const float kth = tmp[static_cast<size_t>(k - 1)];
  int64_t better = 0;
  for (int64_t i = 0; i < n; ++i) better += score_before(scores[i], kth) ? 1 : 0;
  int64_t ties_left = k - better;  // how many scores equivalent to kth make the cut
  std::vector<int64_t> picked;
  picked.reserve(static_cast<size_t>(k));
  for (int64_t i = 0; i < n; ++i) {
    if (score_before(scores[i], kth)) {
      picked.push_back(i);
    } else if (ties_left > 0 && !score_before(kth, scores[i])) {
      picked.push_back(i);
      --ties_left;
    }
  }
  std::stable_sort(picked.begin(), picked.end(),
                   [scores](int64_t i, int64_t j) { return score_before(scores[i], scores[j]); });
  return picked;
}

// Greedy NMS with torchvision.ops.nms semantics: visit boxes by descending score (stable),
// keep a box unless an already kept one overlaps it with IoU > iou_threshold (IoU in float32,
// compared as double), areas (x2 - x1) * (y2 - y1) without +1; iou_threshold must be >= 0.
// Returns kept indices in visit order.
// Stops after max_keep kept boxes (< 0: no limit): later boxes never change earlier decisions, so
// this equals running the full NMS and truncating, only faster.
inline std::vector<int64_t> greedy_nms(const float* boxes, const float* scores, int64_t n,
                                       double iou_threshold, int64_t max_keep = -1) {
  std::vector<int64_t> keep;
  if (n <= 0) return keep;
  const std::vector<int64_t> order = stable_order_desc(scores, n);
  // Structure of arrays in visit order: the inner loop then streams through memory.
  std::vector<float> x1(n), y1(n), x2(n), y2(n), area(n);
  for (int64_t r = 0; r < n; ++r) {
    const float* b = boxes + order[r] * 4;
    x1[r] = b[0];
    y1[r] = b[1];
    x2[r] = b[2];
    y2[r] = b[3];
    area[r] = (b[2] - b[0]) * (b[3] - b[1]);
  }
  std::vector<uint8_t> suppressed(static_cast<size_t>(n), 0);
  for (int64_t r = 0; r < n; ++r) {
    if (suppressed[r]) continue;
    keep.push_back(order[r]);
    if (max_keep >= 0 && static_cast<int64_t>(keep.size()) >= max_keep) break;
    const float ix1 = x1[r], iy1 = y1[r], ix2 = x2[r], iy2 = y2[r], iarea = area[r];
    for (int64_t s = r + 1; s < n; ++s) {
      if (suppressed[s]) continue;
      const float xx1 = std::max(ix1, x1[s]);
      const float yy1 = std::max(iy1, y1[s]);
      const float xx2 = std::min(ix2, x2[s]);
      const float yy2 = std::min(iy2, y2[s]);
      const float w = std::max(0.0f, xx2 - xx1);
      const float h = std::max(0.0f, yy2 - yy1);
      // No overlap: IoU is 0 (or NaN), never > a threshold >= 0; skip the division.
      if (w == 0.0f || h == 0.0f) continue;
      const float inter = w * h;
      const float iou = inter / (iarea + area[s] - inter);
      if (static_cast<double>(iou) > iou_threshold) suppressed[s] = 1;
    }
  }
  return keep;
}

// mmcv batched_nms: shift every box by group * (max coordinate + 1) so that boxes of different
// groups never overlap, then run plain NMS on the shifted boxes. The shift is computed exactly
// like mmcv (float32, max over all 4n coordinates, NaN-propagating like torch.max), so even
// group 0 gets 0 * (max + 1), which is NaN when a coordinate is infinite, as upstream.
inline std::vector<int64_t> batched_nms(const float* boxes, const float* scores, const int64_t* groups,
                                        int64_t n, double iou_threshold, int64_t max_keep = -1) {
  if (n <= 0) return {};
  float max_coord = boxes[0];
  for (int64_t i = 0; i < n * 4; ++i) {
    const float v = boxes[i];
    if (std::isnan(v) || std::isnan(max_coord)) {
      max_coord = std::numeric_limits<float>::quiet_NaN();
    } else if (v > max_coord) {
      max_coord = v;
    }
  }
  const float step = max_coord + 1.0f;
  std::vector<float> shifted(static_cast<size_t>(n) * 4);
  for (int64_t i = 0; i < n; ++i) {
    const float offset = static_cast<float>(groups[i]) * step;
    for (int j = 0; j < 4; ++j) shifted[i * 4 + j] = boxes[i * 4 + j] + offset;
  }
  return greedy_nms(shifted.data(), scores, n, iou_threshold, max_keep);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// torch.clamp on float32: NaN passes through.
inline float clampf(float v, float lo, float hi) {
  if (v < lo) v = lo;
  if (v > hi) v = hi;
  return v;
}

// mmdet DeltaXYWHBBoxCoder.decode for one box (delta2bbox, clip_border=True):
// denormalise (d * std + mean), centre shift by the anchor size, log-size clamped to
// +-|log(wh_ratio_clip)|, then clip x to [0, max_w] and y to [0, max_h].
struct DeltaCoder {
  float means[4];
  float stds[4];
  float max_ratio;  // |log(16 / 1000)| rounded to float32, as torch.clamp does
  float max_w;
  float max_h;

  void decode(const float* anchor, const float* delta, float* out) const {
    const float dx = delta[0] * stds[0] + means[0];
    const float dy = delta[1] * stds[1] + means[1];
    float dw = delta[2] * stds[2] + means[2];
    float dh = delta[3] * stds[3] + means[3];
    const float px = (anchor[0] + anchor[2]) * 0.5f;
    const float py = (anchor[1] + anchor[3]) * 0.5f;
    const float pw = anchor[2] - anchor[0];
    const float ph = anchor[3] - anchor[1];
    const float dxw = pw * dx;
    const float dyh = ph * dy;
    dw = clampf(dw, -max_ratio, max_ratio);
    dh = clampf(dh, -max_ratio, max_ratio);
    const float gx = px + dxw;
    const float gy = py + dyh;
    const float gw = pw * std::exp(dw);
    const float gh = ph * std::exp(dh);
    out[0] = clampf(gx - gw * 0.5f, 0.0f, max_w);
    out[1] = clampf(gy - gh * 0.5f, 0.0f, max_h);
    out[2] = clampf(gx + gw * 0.5f, 0.0f, max_w);
    out[3] = clampf(gy + gh * 0.5f, 0.0f, max_h);
  }
};

// Wh ratio clip of mmdet's delta2bbox (16 / 1000), as the float32 bound torch.clamp uses.
inline float default_max_ratio() { return static_cast<float>(std::fabs(std::log(16.0 / 1000.0))); }

}  // namespace afd::det
