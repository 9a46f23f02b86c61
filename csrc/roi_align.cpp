// RoIAlign with torchvision.ops.roi_align semantics (float32, same operation order), and the
// multi-level variant of mmdet's SingleRoIExtractor (each RoI pooled from the FPN level its size
// maps to). The maps a RoI uses are first transposed to (H, W, C), so that each bilinear tap reads
// C contiguous floats and the per-channel arithmetic vectorises across channels; every output
// element still sees torchvision's operation order (bit-identical results). Work is split over
// rows (transpose) and RoIs (pooling) with afd::parallel_for, GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "common.h"
#include "level_list.h"

namespace py = pybind11;

namespace {

using FArray = py::array_t<float, py::array::c_style>;

// Where and how densely one RoI is sampled on its feature map (torchvision's roi_align_kernel).
struct RoiPlan {
  int64_t level = -1;  // which map the RoI is pooled from; < 0 -> output zeros
  int64_t height = 0, width = 0;
  float start_h = 0, start_w = 0, bin_h = 0, bin_w = 0;
  int64_t grid_h = 0, grid_w = 0;  // samples per bin along y / x (<= 0: none)
  float count = 1;                 // max(grid_h * grid_w, 1)
};

// One bilinear sample: four pixel offsets in the plane and their weights.
struct Sample {
  int64_t pos[4];
  float w[4];
};

// Largest number of sample points one RoI may need; beyond that the caller gets a ValueError
// instead of a multi-GB allocation (e.g. a huge RoI with sampling_ratio=0 on a fine map).
constexpr int64_t kMaxSamplesPerRoi = int64_t{1} << 20;  // 48 MiB of taps per worker; upstream RoIs need < 1e5
// Bounds of the pooled size and of a fixed sampling ratio (upstream uses 7 and 0 or 2).
constexpr int64_t kMaxOutputSize = 1024;
constexpr int64_t kMaxSamplingRatio = 1024;

int64_t adaptive_grid(float roi_extent, int64_t pooled) {
  const float g = std::ceil(roi_extent / static_cast<float>(pooled));
  if (std::isnan(g)) return 0;  // <= 0 means no samples
  // Clamped before the conversion (a float beyond int64 is UB); anything this large is refused later.
  return static_cast<int64_t>(std::clamp(g, -1.0f, static_cast<float>(kMaxSamplesPerRoi + 1)));
}

RoiPlan make_plan(const float* roi, int64_t level, int64_t height, int64_t width, float spatial_scale,
                  int64_t pooled, int64_t sampling_ratio, bool aligned) {
  RoiPlan p;
  p.level = level;
  p.height = height;
  p.width = width;
  const float offset = aligned ? 0.5f : 0.0f;
  p.start_w = roi[0] * spatial_scale - offset;
  p.start_h = roi[1] * spatial_scale - offset;
  const float end_w = roi[2] * spatial_scale - offset;
  const float end_h = roi[3] * spatial_scale - offset;
  float roi_w = end_w - p.start_w;
  float roi_h = end_h - p.start_h;
  if (!aligned) {  // legacy mode: malformed RoIs forced to 1 x 1
    roi_w = std::max(roi_w, 1.0f);
    roi_h = std::max(roi_h, 1.0f);
  }
  p.bin_h = roi_h / static_cast<float>(pooled);
  p.bin_w = roi_w / static_cast<float>(pooled);
  p.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_h, pooled);
  p.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_w, pooled);
  p.count = static_cast<float>(std::max<int64_t>(p.grid_h * p.grid_w, 1));
  return p;
}

// pooled^2 * grid_h * grid_w, in double so that it cannot overflow (the factors are bounded
// by kMaxOutputSize, kMaxSamplingRatio and kMaxSamplesPerRoi + 1).
double samples_per_roi(const RoiPlan& p, int64_t pooled) {
  if (p.grid_h <= 0 || p.grid_w <= 0) return 0;
  return static_cast<double>(pooled) * static_cast<double>(pooled) * static_cast<double>(p.grid_h) *
         static_cast<double>(p.grid_w);
}

// Bilinear taps of every sample point of the RoI, in (ph, pw, iy, ix) order. Out-of-range
// points (y < -1, y > H, x < -1, x > W, or NaN) get zero weights; others are clamped at 0 and
// at the last row / column like torchvision.
void precompute_samples(const RoiPlan& p, int64_t pooled, std::vector<Sample>& out) {
  out.resize(static_cast<size_t>(samples_per_roi(p, pooled)));  // checked <= kMaxSamplesPerRoi
  size_t idx = 0;
  const float h = static_cast<float>(p.height), w = static_cast<float>(p.width);
  for (int64_t ph = 0; ph < pooled && p.grid_h > 0 && p.grid_w > 0; ++ph) {
    for (int64_t pw = 0; pw < pooled; ++pw) {
      for (int64_t iy = 0; iy < p.grid_h; ++iy) {
        const float yy = p.start_h + static_cast<float>(ph) * p.bin_h +
                         static_cast<float>(iy + 0.5f) * p.bin_h / static_cast<float>(p.grid_h);
        for (int64_t ix = 0; ix < p.grid_w; ++ix) {
          const float xx = p.start_w + static_cast<float>(pw) * p.bin_w +
                           static_cast<float>(ix + 0.5f) * p.bin_w / static_cast<float>(p.grid_w);
          Sample& s = out[idx++];
          float y = yy, x = xx;
          if (!(y >= -1.0f && y <= h && x >= -1.0f && x <= w)) {
            s = Sample{{0, 0, 0, 0}, {0.0f, 0.0f, 0.0f, 0.0f}};
            continue;
          }
          if (y <= 0) y = 0;
          if (x <= 0) x = 0;
          int64_t y_low = static_cast<int64_t>(y), x_low = static_cast<int64_t>(x), y_high, x_high;
          if (y_low >= p.height - 1) {
            y_high = y_low = p.height - 1;
            y = static_cast<float>(y_low);
          } else {
            y_high = y_low + 1;
          }
          if (x_low >= p.width - 1) {
            x_high = x_low = p.width - 1;
            x = static_cast<float>(x_low);
          } else {
            x_high = x_low + 1;
          }
          const float ly = y - static_cast<float>(y_low), lx = x - static_cast<float>(x_low);
          const float hy = 1.0f - ly, hx = 1.0f - lx;
          s.pos[0] = y_low * p.width + x_low;
          s.pos[1] = y_low * p.width + x_high;
          s.pos[2] = y_high * p.width + x_low;
          s.pos[3] = y_high * p.width + x_high;
          s.w[0] = hy * hx;
          s.w[1] = hy * lx;
          s.w[2] = ly * hx;
          s.w[3] = ly * lx;
        }
      }
    }
  }
}

// Sums of the bilinear samples of one bin for kBlock channels starting at c0 (n <= kBlock of
// them), into acc. Per channel the sum runs over the samples in order, each term
// ((w0 * a + w1 * b) + w2 * c) + w3 * d, as torchvision's scalar loop does; -ffp-contract=off
// keeps the compiler from fusing it, on every clone.
constexpr int64_t kBlock = 64;

template <int64_t N>
inline void accumulate_bin(const float* __restrict hwc, int64_t channels, const Sample* samples, int64_t count,
                           int64_t c0, float* __restrict acc) {
  for (int64_t c = 0; c < N; ++c) acc[c] = 0.0f;
  for (int64_t j = 0; j < count; ++j) {
    const Sample& s = samples[j];
    const float* __restrict f0 = hwc + s.pos[0] * channels + c0;
    const float* __restrict f1 = hwc + s.pos[1] * channels + c0;
    const float* __restrict f2 = hwc + s.pos[2] * channels + c0;
    const float* __restrict f3 = hwc + s.pos[3] * channels + c0;
    const float w0 = s.w[0], w1 = s.w[1], w2 = s.w[2], w3 = s.w[3];
    for (int64_t c = 0; c < N; ++c) acc[c] += w0 * f0[c] + w1 * f1[c] + w2 * f2[c] + w3 * f3[c];
  }
}

// Average of the bilinear samples of each bin, all channels. hwc is the (H, W, C) map, dst the
// RoI's (C, pooled, pooled) output. Compiled for AVX-512, AVX2 and baseline x86-64 (picked at
// load time); the arithmetic per element is the same in all three.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void pool_roi(const float* __restrict hwc, int64_t channels, const RoiPlan& p, const std::vector<Sample>& samples,
              int64_t pooled, float* __restrict dst) {
  const int64_t per_bin = samples.empty() ? 0 : p.grid_h * p.grid_w;
  const int64_t plane_out = pooled * pooled;
  alignas(64) float acc[kBlock];
  for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
    const int64_t n = std::min(kBlock, channels - c0);
    for (int64_t b = 0; b < plane_out; ++b) {
      const Sample* bin = samples.data() + b * per_bin;
      if (n == kBlock) {
        accumulate_bin<kBlock>(hwc, channels, bin, per_bin, c0, acc);
      } else {
        for (int64_t c = 0; c < n; ++c) {
          float a = 0.0f;
          for (int64_t j = 0; j < per_bin; ++j) {
            const Sample& s = bin[j];
            a += s.w[0] * hwc[s.pos[0] * channels + c0 + c] + s.w[1] * hwc[s.pos[1] * channels + c0 + c] +
                 s.w[2] * hwc[s.pos[2] * channels + c0 + c] + s.w[3] * hwc[s.pos[3] * channels + c0 + c];
          }
          acc[c] = a;
        }
      }
      for (int64_t c = 0; c < n; ++c) dst[(c0 + c) * plane_out + b] = acc[c] / p.count;
    }
  }
}

// A float buffer without zero-initialisation, in 2 MiB huge pages where Linux allows: a level map
// is tens of MB, and faulting it in 4 KiB pages cost more than the transpose itself (measured).
struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], FreeDeleter>;

// A buffer and how many floats it holds.
struct Scratch {
  Buffer data;
  size_t capacity = 0;
};

Scratch alloc_floats(size_t n) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t bytes = std::max<size_t>(n * sizeof(float), 1);
  if (bytes < kHuge) {  // a small map: a huge page would only add a 2 MiB clear
    auto* small = static_cast<float*>(std::malloc(bytes));
    if (small == nullptr) throw std::bad_alloc();
    return Scratch{Buffer(small), n};
  }
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  auto* p = static_cast<float*>(std::aligned_alloc(kHuge, rounded));
  if (p == nullptr) throw std::bad_alloc();
#ifdef __linux__
  madvise(p, rounded, MADV_HUGEPAGE);  // advisory: failure only costs speed
#endif
  return Scratch{Buffer(p), rounded / sizeof(float)};
}

// The transposed maps' buffers, kept between calls. glibc returns a freed buffer this large to
// the kernel at once, and the next call's copy then faults every page in again: in the Faster
// R-CNN pipeline (1,000 RoIs, a 66 MB level 0) the op took 210-237 ms per image against 88-100 ms
// in a loop that reused the memory (2-core AVX2 EPYC, 2026-12-04). At most kPooled buffers of at
// most kMaxPooledBytes each are kept (a call takes one per level it reads; concurrent calls take
// their own); larger ones are freed as before.
class ScratchPool {
 public:
  Scratch take(size_t n) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // the smallest free buffer that is large enough
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->capacity >= n && (best == free_.end() || it->capacity < best->capacity)) best = it;
      }
      if (best != free_.end()) {
        Scratch s = std::move(*best);
        free_.erase(best);
        return s;
      }
    }
    return alloc_floats(n);
  }

  void give(Scratch s) {
    if (!s.data || s.capacity * sizeof(float) > kMaxPooledBytes) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < kPooled) {
      free_.push_back(std::move(s));
      return;
    }
    // full: keep the larger buffers, which are the ones that cost faults to remake
    auto smallest = std::min_element(free_.begin(), free_.end(),
                                     [](const Scratch& a, const Scratch& b) { return a.capacity < b.capacity; });
    if (smallest->capacity < s.capacity) *smallest = std::move(s);
  }

 private:
  static constexpr size_t kPooled = 4;
  static constexpr size_t kMaxPooledBytes = size_t{256} << 20;
  std::mutex mutex_;
  std::vector<Scratch> free_;
};

ScratchPool& scratch_pool() {
  static ScratchPool* pool = new ScratchPool();  // never destroyed: no order-of-exit questions
  return *pool;
}

// (C, H, W) -> (H, W, C) into dst, rows split over threads; tiles of 32 pixels keep both sides in
// cache.
void to_hwc(const float* chw, int64_t channels, int64_t height, int64_t width, int threads, float* out) {
  const int64_t plane = height * width;
  afd::parallel_for(height, threads, [&](int64_t y) {
    constexpr int64_t kTile = 32;
    for (int64_t x0 = 0; x0 < width; x0 += kTile) {
      const int64_t x1 = std::min(width, x0 + kTile);
      for (int64_t c = 0; c < channels; ++c) {
        const float* src = chw + c * plane + y * width;
        for (int64_t x = x0; x < x1; ++x) out[(y * width + x) * channels + c] = src[x];
      }
    }
  });
}

// One (C, H, W) map per level, as given.
struct Level {
  const float* data;
  int64_t height, width;
};

// Pools every RoI from its level; plans[k].level < 0 leaves zeros.
py::array_t<float> run_plans(const std::vector<RoiPlan>& plans, const std::vector<Level>& levels, int64_t channels,
                             int64_t pooled) {
  const auto k = static_cast<py::ssize_t>(plans.size());
  for (size_t i = 0; i < plans.size(); ++i) {
    if (samples_per_roi(plans[i], pooled) > static_cast<double>(kMaxSamplesPerRoi)) {
      afd::fail("rois[", i, "] needs ", plans[i].grid_h, " x ", plans[i].grid_w,
                " samples per bin; pass a positive sampling_ratio or a smaller RoI");
    }
  }
  py::array_t<float> out({k, static_cast<py::ssize_t>(channels), static_cast<py::ssize_t>(pooled),
                          static_cast<py::ssize_t>(pooled)});
  float* dst = out.mutable_data();
  const int64_t roi_out = channels * pooled * pooled;
  if (k == 0 || channels == 0) return out;
  {
    py::gil_scoped_release release;
    const int threads = afd::default_threads();
    // Only the levels some RoI is pooled from are transposed, into pooled scratch buffers that
    // go back to the pool however this block is left.
    struct Leases {
      std::vector<Scratch> held;
      ~Leases() {
        for (Scratch& s : held) scratch_pool().give(std::move(s));
      }
    } hwc;
    hwc.held.resize(levels.size());
    for (const RoiPlan& p : plans) {
      if (p.level < 0) continue;
      Scratch& buf = hwc.held[static_cast<size_t>(p.level)];
      if (buf.data) continue;
      const Level& lv = levels[static_cast<size_t>(p.level)];
      buf = scratch_pool().take(static_cast<size_t>(channels * lv.height * lv.width));
      to_hwc(lv.data, channels, lv.height, lv.width, threads, buf.data.get());
    }
    const int workers = static_cast<int>(std::min<int64_t>(threads, k));
    const int64_t chunk = (k + workers - 1) / workers;
    afd::parallel_for(workers, workers, [&](int64_t t) {
      std::vector<Sample> samples;
      for (int64_t r = t * chunk; r < std::min<int64_t>(k, (t + 1) * chunk); ++r) {
        const RoiPlan& p = plans[static_cast<size_t>(r)];
        float* o = dst + r * roi_out;
        if (p.level < 0) {
          std::fill(o, o + roi_out, 0.0f);
          continue;
        }
        precompute_samples(p, pooled, samples);
        pool_roi(hwc.held[static_cast<size_t>(p.level)].data.get(), channels, p, samples, pooled, o);
      }
    });
  }
  return out;
}

FArray expect_rois(const py::object& obj) {
  auto rois = afd::expect_array<float>(obj, "rois");
  afd::expect_ndim(rois, 2, "rois");
  if (rois.shape(1) != 4) afd::fail("rois must have shape (K, 4) as (x1, y1, x2, y2), got ", afd::shape_str(rois));
  return rois;
}

void expect_pool_args(int64_t output_size, int64_t sampling_ratio) {
  if (output_size < 1 || output_size > kMaxOutputSize) {
    afd::fail("output_size must be >= 1 and <= ", kMaxOutputSize, ", got ", output_size);
  }
  if (sampling_ratio > kMaxSamplingRatio) {
    afd::fail("sampling_ratio must be <= ", kMaxSamplingRatio, " (<= 0: adaptive), got ", sampling_ratio);
  }
}

py::array_t<float> roi_align(const py::object& feature_obj, const py::object& rois_obj, double spatial_scale,
                             int64_t output_size, int64_t sampling_ratio, bool aligned) {
  auto feature = afd::expect_array<float>(feature_obj, "feature");
  afd::expect_ndim(feature, 3, "feature");
  auto rois = expect_rois(rois_obj);
  if (!(std::isfinite(spatial_scale) && spatial_scale > 0.0)) {
    afd::fail("spatial_scale must be finite and > 0, got ", spatial_scale);
  }
  expect_pool_args(output_size, sampling_ratio);
  if (feature.shape(1) < 1 || feature.shape(2) < 1) {
    afd::fail("feature must have a non-empty (H, W) plane, got shape ", afd::shape_str(feature));
  }
  const int64_t k = rois.shape(0);
  std::vector<RoiPlan> plans(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    plans[i] = make_plan(rois.data() + i * 4, 0, feature.shape(1), feature.shape(2),
                         static_cast<float>(spatial_scale), output_size, sampling_ratio, aligned);
  }
  return run_plans(plans, {Level{feature.data(), feature.shape(1), feature.shape(2)}}, feature.shape(0), output_size);
}

py::array_t<float> multilevel_roi_align(const py::object& feats_obj, const py::object& rois_obj,
                                        const std::vector<int64_t>& featmap_strides, double finest_scale,
                                        int64_t output_size, int64_t sampling_ratio, bool aligned) {
  const std::vector<FArray> feats = afd::expect_level_list(feats_obj, "feats", 3);
  for (size_t i = 0; i < feats.size(); ++i) {
    const FArray& f = feats[i];
    if (f.shape(1) < 1 || f.shape(2) < 1) {
      afd::fail("feats[", i, "] must have a non-empty (H, W) plane, got shape ", afd::shape_str(f));
    }
    if (f.shape(0) != feats[0].shape(0)) {
      afd::fail("feats[", i, "] must have ", feats[0].shape(0), " channels like feats[0], got shape ", afd::shape_str(f));
    }
  }
  const int64_t levels = static_cast<int64_t>(feats.size());
  if (static_cast<int64_t>(featmap_strides.size()) != levels) {
    afd::fail("featmap_strides must have ", levels, " entries (one per feats level), got ", featmap_strides.size());
  }
  for (size_t i = 0; i < featmap_strides.size(); ++i) {
    if (featmap_strides[i] < 1) afd::fail("featmap_strides[", i, "] must be >= 1, got ", featmap_strides[i]);
  }
  if (!(std::isfinite(finest_scale) && finest_scale > 0.0)) {
    afd::fail("finest_scale must be finite and > 0, got ", finest_scale);
  }
  auto rois = expect_rois(rois_obj);
  expect_pool_args(output_size, sampling_ratio);

  const int64_t k = rois.shape(0);
  const float finest = static_cast<float>(finest_scale);
  std::vector<RoiPlan> plans(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    const float* roi = rois.data() + i * 4;
    // SingleRoIExtractor.map_roi_levels in float32: floor(log2(sqrt(h * w) / finest + 1e-6)),
    // clamped to [0, L - 1]; a NaN level matches no level and the output stays zero.
    const float scale = std::sqrt((roi[3] - roi[1]) * (roi[2] - roi[0]));
    const float lvl_f = std::floor(std::log2(scale / finest + 1e-6f));
    if (std::isnan(lvl_f)) continue;
    const int64_t lvl = static_cast<int64_t>(std::min(std::max(lvl_f, 0.0f), static_cast<float>(levels - 1)));
    const FArray& f = feats[static_cast<size_t>(lvl)];
    const float spatial_scale = static_cast<float>(1.0 / static_cast<double>(featmap_strides[lvl]));
    plans[i] = make_plan(roi, lvl, f.shape(1), f.shape(2), spatial_scale, output_size, sampling_ratio, aligned);
  }
  std::vector<Level> levels_in;
  for (const FArray& f : feats) levels_in.push_back(Level{f.data(), f.shape(1), f.shape(2)});
  return run_plans(plans, levels_in, feats[0].shape(0), output_size);
}

}  // namespace

void register_roi_align(py::module_& m) {
  m.def("roi_align", &roi_align, py::arg("feature"), py::arg("rois"), py::arg("spatial_scale"),
        py::arg("output_size"), py::arg("sampling_ratio"), py::arg("aligned"),
        "torchvision.ops.roi_align for one image: feature float32 (C, H, W), rois float32 (K, 4) as "
        "(x1, y1, x2, y2) in input pixels; returns float32 (K, C, output_size, output_size).");
  m.def("multilevel_roi_align", &multilevel_roi_align, py::arg("feats"), py::arg("rois"), py::arg("featmap_strides"),
        py::arg("finest_scale"), py::arg("output_size"), py::arg("sampling_ratio"), py::arg("aligned"),
        "mmdet SingleRoIExtractor for one image: each RoI pooled (torchvision RoIAlign) from the level "
        "floor(log2(sqrt(w * h) / finest_scale + 1e-6)) clamped to the feats levels; returns float32 "
        "(K, C, output_size, output_size).");
}
