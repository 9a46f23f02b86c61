// Face crops: bilinear affine warp of a uint8 BGR image into N fixed-size crops, reproducing
// cv2.warpAffine(img, M, (w, h), flags=INTER_LINEAR, borderMode=BORDER_CONSTANT, borderValue=0)
// pixel for pixel, optionally fused with the float normalisation (x / 255 - mean) / std.
//
// Two arithmetic models of OpenCV are implemented (they round differently; neither is "more right"):
//  - kOpenCV5: the float32 kernels of OpenCV 5.x (warp_kernels.simd.hpp): the inverse matrix is
//    rounded to float32, source coordinates are fma(M0, x, float(y*M1 + M2)), the fractional parts
//    weight a float32 lerp done with fma, the result rounds half to even. Bit-exact with
//    opencv-python-headless 5.0.0 on x86-64 (AVX2 dispatch).
//  - kOpenCV4: the fixed-point path of OpenCV 4.x (imgwarp.cpp): coordinates quantised to 1/32 px
//    (AB_BITS = 10, INTER_BITS = 5), 15-bit integer bilinear weights. Bit-exact with
//    opencv-python-headless 4.10.0, 4.11.0 and 4.12.0.
// The two disagree on ~7% of the uint8 values of face crops of a real image (mostly by 1 level,
// at most 4).
// Both sample each of the four neighbours as 0 when it lies outside the image.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "common.h"

// No silent FMA contraction: CMakeLists.txt builds every op with -ffp-contract=off, and the
// float32 sequences below must round exactly where the reference implementations do.


namespace py = pybind11;

namespace {

enum class WarpMode { kOpenCV5, kOpenCV4 };

WarpMode parse_mode(const std::string& mode) {
  if (mode == "opencv5") return WarpMode::kOpenCV5;
  if (mode == "opencv4") return WarpMode::kOpenCV4;
  afd::fail("mode must be 'opencv5' or 'opencv4', got '", mode, "'");
}

struct Image {
  const uint8_t* data;
  int64_t rows, cols;  // pixels; 3 interleaved channels, rows are 3*cols bytes apart
};

// Inverse of a forward (source -> crop) 2x3 affine, computed the way cv::warpAffine does
// before sampling (double precision, reciprocal of the determinant).
std::array<double, 6> invert_affine(const double* m) {
  double d = m[0] * m[4] - m[1] * m[3];
  d = d != 0 ? 1. / d : 0.;
  const double a11 = m[4] * d, a22 = m[0] * d;
  std::array<double, 6> r{};
  r[0] = a11;
  r[1] = m[1] * -d;
  r[3] = m[3] * -d;
  r[4] = a22;
  r[2] = -r[0] * m[2] - r[1] * m[5];
  r[5] = -r[3] * m[2] - r[4] * m[5];
  return r;
}

// OpenCV's vector loop handles 16 output pixels per step with AVX2 (the x86-64 dispatch target of
// its warp kernels) and leaves the last out_w % 16 columns to a scalar loop whose coordinate
// arithmetic rounds once more (compiled as fma(x, M0, y*M1) + M2). Crops 16 px wide or any
// multiple of it (the 256 px face crops) never reach that loop.
constexpr int64_t kOpenCV5Lanes = 16;

// One output row of the float32 (OpenCV 5) model. `emit(x, c, value)` receives channel c of
// the input's channel order.
template <typename Emit>
AFD_INLINE void warp_row_opencv5(const Image& img, const std::array<double, 6>& inv, int64_t y, int64_t out_w,
                                 Emit&& emit) {
  float m[6];
  for (int i = 0; i < 6; ++i) m[i] = static_cast<float>(inv[i]);
  // Per-row offsets in float32 arithmetic (int row times float coefficient), as OpenCV's kernel.
  const float fy = static_cast<float>(y);
  const float row_x = fy * m[1] + m[2];
  const float row_y = fy * m[4] + m[5];
  const int64_t rows = img.rows, cols = img.cols, step = 3 * img.cols;
  const int64_t vector_end = out_w - out_w % kOpenCV5Lanes;
  for (int64_t x = 0; x < out_w; ++x) {
    const float fx = static_cast<float>(x);
    float sx, sy;
    if (x < vector_end) {
      sx = std::fma(m[0], fx, row_x);
      sy = std::fma(m[3], fx, row_y);
    } else {
      sx = std::fma(fx, m[0], fy * m[1]) + m[2];
      sy = std::fma(fx, m[3], fy * m[4]) + m[5];
    }
    // Fully outside (all four neighbours out, or not a usable coordinate): the border value 0.
    if (!(sx >= -1.f && sx < static_cast<float>(cols) && sy >= -1.f && sy < static_cast<float>(rows))) {
      for (int c = 0; c < 3; ++c) emit(x, c, uint8_t{0});
      continue;
    }
    const float flx = std::floor(sx), fly = std::floor(sy);
    const int64_t ix = static_cast<int64_t>(flx), iy = static_cast<int64_t>(fly);
    const float ax = sx - flx, ay = sy - fly;
    const bool in_x0 = ix >= 0, in_x1 = ix + 1 < cols, in_y0 = iy >= 0, in_y1 = iy + 1 < rows;
    const int64_t at = iy * step + ix * 3;  // may be "before" the image: only read when in range
    const uint8_t* src = img.data;
    for (int c = 0; c < 3; ++c) {
      const float p00 = (in_y0 && in_x0) ? src[at + c] : 0.f;
      const float p01 = (in_y0 && in_x1) ? src[at + c + 3] : 0.f;
      const float p10 = (in_y1 && in_x0) ? src[at + step + c] : 0.f;
      const float p11 = (in_y1 && in_x1) ? src[at + step + c + 3] : 0.f;
      const float top = std::fma(ax, p01 - p00, p00);
      const float bottom = std::fma(ax, p11 - p10, p10);
      const float v = std::fma(ay, bottom - top, top);
      const float r = std::nearbyint(v);  // round half to even (default FP environment)
      emit(x, c, static_cast<uint8_t>(r < 0.f ? 0.f : (r > 255.f ? 255.f : r)));
    }
  }
}

// cvRound of a double, saturated to int32 (saturate_cast<int>(double)).
int64_t round_sat_i32(double v) {
  const double r = std::nearbyint(v);
  if (!(r > -2147483648.0)) return INT32_MIN;
  if (r > 2147483647.0) return INT32_MAX;
  return static_cast<int64_t>(r);
}

// One output row of the fixed-point (OpenCV 4) model.
template <typename Emit>
void warp_row_opencv4(const Image& img, const std::array<double, 6>& m, int64_t y, int64_t out_w, Emit&& emit) {
  constexpr int kInterBits = 5, kAbBits = 10, kCoefBits = 15;
  constexpr int kTab = 1 << kInterBits;
  constexpr double kAbScale = 1 << kAbBits;
  constexpr int64_t kRoundDelta = (1 << kAbBits) / kTab / 2;
  const int64_t x0 = round_sat_i32((m[1] * static_cast<double>(y) + m[2]) * kAbScale) + kRoundDelta;
  const int64_t y0 = round_sat_i32((m[4] * static_cast<double>(y) + m[5]) * kAbScale) + kRoundDelta;
  const int64_t rows = img.rows, cols = img.cols, step = 3 * img.cols;
  for (int64_t x = 0; x < out_w; ++x) {
    // Arithmetic shifts are floors; int64 keeps far-away points far away instead of wrapping.
    const int64_t gx = (x0 + round_sat_i32(m[0] * static_cast<double>(x) * kAbScale)) >> (kAbBits - kInterBits);
    const int64_t gy = (y0 + round_sat_i32(m[3] * static_cast<double>(x) * kAbScale)) >> (kAbBits - kInterBits);
    const int64_t ix = gx >> kInterBits, iy = gy >> kInterBits;
    const int32_t ax = static_cast<int32_t>(gx & (kTab - 1)), ay = static_cast<int32_t>(gy & (kTab - 1));
    if (ix >= cols || ix + 1 < 0 || iy >= rows || iy + 1 < 0) {
      for (int c = 0; c < 3; ++c) emit(x, c, uint8_t{0});
      continue;
    }
    // 15-bit weights: products of (1 - a/32, a/32) scaled by 2^15 are exact integers summing to 2^15.
    const int32_t w00 = (kTab - ax) * (kTab - ay) * 32, w01 = ax * (kTab - ay) * 32;
    const int32_t w10 = (kTab - ax) * ay * 32, w11 = ax * ay * 32;
    const bool in_x0 = ix >= 0, in_x1 = ix + 1 < cols, in_y0 = iy >= 0, in_y1 = iy + 1 < rows;
    const int64_t at = iy * step + ix * 3;
    const uint8_t* src = img.data;
    for (int c = 0; c < 3; ++c) {
      const int32_t p00 = (in_y0 && in_x0) ? src[at + c] : 0;
      const int32_t p01 = (in_y0 && in_x1) ? src[at + c + 3] : 0;
      const int32_t p10 = (in_y1 && in_x0) ? src[at + step + c] : 0;
      const int32_t p11 = (in_y1 && in_x1) ? src[at + step + c + 3] : 0;
      const int32_t s = p00 * w00 + p01 * w01 + p10 * w10 + p11 * w11;
      const int32_t v = (s + (1 << (kCoefBits - 1))) >> kCoefBits;
      emit(x, c, static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v)));
    }
  }
}

#if AFD_FMA_CLONE
// The same row compiled for CPUs with FMA: std::fma becomes one instruction instead of a libm call
// (3x faster crops). Results are identical: fma is correctly rounded either way.
template <typename Emit>
__attribute__((target("avx2,fma"))) void warp_row_opencv5_fma(const Image& img, const std::array<double, 6>& inv,
                                                                int64_t y, int64_t out_w, Emit&& emit) {
  warp_row_opencv5(img, inv, y, out_w, emit);
}

bool cpu_has_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <typename Emit>
void warp_row(WarpMode mode, const Image& img, const std::array<double, 6>& inv, int64_t y, int64_t out_w,
              Emit&& emit) {
  if (mode == WarpMode::kOpenCV5) {
#if AFD_FMA_CLONE
    if (cpu_has_fma()) {
      warp_row_opencv5_fma(img, inv, y, out_w, emit);
      return;
    }
#endif
    warp_row_opencv5(img, inv, y, out_w, emit);
  } else {
    warp_row_opencv4(img, inv, y, out_w, emit);
  }
}

struct WarpArgs {
  py::array_t<uint8_t, py::array::c_style> image;
  py::array_t<double, py::array::c_style> matrices;
  int64_t n = 0, out_w = 0, out_h = 0;
  WarpMode mode = WarpMode::kOpenCV5;
  std::vector<std::array<double, 6>> inverses;
};

// Worker threads a caller may ask for (0: one per core); more would only cost thread start-ups.
constexpr int kMaxThreads = 256;

WarpArgs validate(const py::handle& image_obj, const py::handle& matrices_obj, int64_t out_w, int64_t out_h,
                  const std::string& mode, int threads) {
  WarpArgs a;
  a.mode = parse_mode(mode);
  if (threads < 0 || threads > kMaxThreads) {
    afd::fail("threads must be in [0, ", kMaxThreads, "] (0: one per core), got ", threads);
  }
  a.image = afd::expect_array<uint8_t>(image_obj, "image");
  afd::expect_ndim(a.image, 3, "image");
  if (a.image.shape(2) != 3) {
    afd::fail("image must have 3 channels (H, W, 3), got shape ", afd::shape_str(a.image));
  }
  if (a.image.shape(0) < 1 || a.image.shape(1) < 1) {
    afd::fail("image must be at least 1x1, got shape ", afd::shape_str(a.image));
  }
  if (a.image.shape(0) > INT32_MAX / 4 || a.image.shape(1) > INT32_MAX / 4) {
    afd::fail("image is too large, got shape ", afd::shape_str(a.image));
  }
  a.matrices = afd::expect_array<double>(matrices_obj, "matrices");
  afd::expect_ndim(a.matrices, 3, "matrices");
  if (a.matrices.shape(1) != 2 || a.matrices.shape(2) != 3) {
    afd::fail("matrices must have shape (N, 2, 3), got ", afd::shape_str(a.matrices));
  }
  if (out_w < 1 || out_h < 1 || out_w > 32767 || out_h > 32767) {
    afd::fail("out_size must be two ints in [1, 32767], got (", out_w, ", ", out_h, ")");
  }
  a.n = a.matrices.shape(0);
  a.out_w = out_w;
  a.out_h = out_h;
  const double* m = a.matrices.data();
  a.inverses.reserve(static_cast<size_t>(a.n));
  for (int64_t i = 0; i < a.n; ++i) {
    const double* mi = m + 6 * i;
    for (int j = 0; j < 6; ++j) {
      if (!std::isfinite(mi[j])) afd::fail("matrices[", i, "] has a non-finite entry ", mi[j]);
    }
    const double det = mi[0] * mi[4] - mi[1] * mi[3];
    if (det == 0 || !std::isfinite(1. / det)) {
      afd::fail("matrices[", i, "] is singular (determinant ", det, ")");
    }
    a.inverses.push_back(invert_affine(mi));
  }
  return a;
}

py::array_t<float> warp_crops(const py::handle& image, const py::handle& matrices, int64_t out_w, int64_t out_h,
                              const py::handle& mean_obj, const py::handle& std_obj, const std::string& mode,
                              int threads) {
  WarpArgs a = validate(image, matrices, out_w, out_h, mode, threads);
  auto mean = afd::expect_array<float>(mean_obj, "mean");
  auto stdv = afd::expect_array<float>(std_obj, "std");
  if (mean.ndim() != 1 || mean.shape(0) != 3) afd::fail("mean must have shape (3,), got ", afd::shape_str(mean));
  if (stdv.ndim() != 1 || stdv.shape(0) != 3) afd::fail("std must have shape (3,), got ", afd::shape_str(stdv));
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(mean.data()[c])) afd::fail("mean[", c, "] must be finite, got ", mean.data()[c]);
    if (!std::isfinite(stdv.data()[c]) || stdv.data()[c] == 0.f) {
      afd::fail("std[", c, "] must be finite and non-zero, got ", stdv.data()[c]);
    }
  }
  // Output channel c (RGB) takes input channel 2 - c (BGR). The normalisation has only 256 possible
  // inputs per channel: tabulate (float(u) / 255 - mean) / std with upstream's float32 rounding.
  std::array<std::array<float, 256>, 3> lut{};
  for (int c = 0; c < 3; ++c) {
    for (int u = 0; u < 256; ++u) {
      const float scaled = static_cast<float>(u) / 255.f;
      const float centred = scaled - mean.data()[c];
      lut[c][u] = centred / stdv.data()[c];
    }
  }
  py::array_t<float> out({a.n, int64_t{3}, a.out_h, a.out_w});
  if (a.n == 0) return out;
  float* dst = out.mutable_data();
  const Image img{a.image.data(), a.image.shape(0), a.image.shape(1)};
  const int64_t plane = a.out_h * a.out_w;
  {
    py::gil_scoped_release release;
    afd::parallel_for(a.n * a.out_h, threads, [&](int64_t task) {
      const int64_t i = task / a.out_h, y = task % a.out_h;
      float* row = dst + i * 3 * plane + y * a.out_w;
      warp_row(a.mode, img, a.inverses[static_cast<size_t>(i)], y, a.out_w, [&](int64_t x, int c, uint8_t v) {
        const int oc = 2 - c;
        row[oc * plane + x] = lut[static_cast<size_t>(oc)][v];
      });
    });
  }
  return out;
}

py::array_t<uint8_t> warp_crops_u8(const py::handle& image, const py::handle& matrices, int64_t out_w, int64_t out_h,
                                   const std::string& mode, int threads) {
  WarpArgs a = validate(image, matrices, out_w, out_h, mode, threads);
  py::array_t<uint8_t> out({a.n, a.out_h, a.out_w, int64_t{3}});
  if (a.n == 0) return out;
  uint8_t* dst = out.mutable_data();
  const Image img{a.image.data(), a.image.shape(0), a.image.shape(1)};
  {
    py::gil_scoped_release release;
    afd::parallel_for(a.n * a.out_h, threads, [&](int64_t task) {
      const int64_t i = task / a.out_h, y = task % a.out_h;
      uint8_t* row = dst + (i * a.out_h + y) * a.out_w * 3;
      warp_row(a.mode, img, a.inverses[static_cast<size_t>(i)], y, a.out_w,
               [&](int64_t x, int c, uint8_t v) { row[x * 3 + c] = v; });
    });
  }
  return out;
}

}  // namespace

void register_warp_affine(py::module_& m) {
  m.def("warp_crops", &warp_crops, py::arg("image"), py::arg("matrices"), py::arg("out_w"), py::arg("out_h"),
        py::arg("mean"), py::arg("std"), py::arg("mode"), py::arg("threads"),
        "Bilinear affine crops of a uint8 BGR image, normalised to float32 NCHW RGB.");
  m.def("warp_crops_u8", &warp_crops_u8, py::arg("image"), py::arg("matrices"), py::arg("out_w"),
        py::arg("out_h"), py::arg("mode"), py::arg("threads"),
        "Bilinear affine crops of a uint8 (H, W, 3) image as uint8 (N, h, w, 3), channel order kept.");
}
