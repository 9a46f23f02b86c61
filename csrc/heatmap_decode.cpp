// Heatmap post-processing of the top-down landmark head, as mmpose 0.x does it at inference:
//  - merge_flip: (heatmaps + shift(flip_back(flipped))) / 2 in float32 (the flip test).
//  - decode_heatmaps: per map argmax + score, then a sub-pixel refinement ("dark" = mmpose's
//    'unbiased' Taylor step on the log of a Gaussian-blurred map, "quarter" = mmpose's 'default'
//    +-0.25 px step, "none"), then the affine back to image pixels (transform_preds, use_udp=False).
// "dark" reproduces upstream's float32 arithmetic step by step, because on flat maps (random
// weights, plateaus) the Newton step amplifies any rounding difference to whole pixels:
//  - the blur rounds like OpenCV 5's float32 separable filter on AVX2/FMA CPUs (cv2.GaussianBlur),
//  - the log is numpy's float32 SIMD log (not libm's logf: they differ by an ulp in ~14% of inputs),
//  - the determinant test uses libm powf for dxy**2 (numpy float32 scalar power),
//  - the 2x2 inverse is LAPACK's partial-pivoting LU in double rounded to float32 (what numpy's
//    float32 np.linalg.inv returns with its OpenBLAS), the matrix-vector product is float32.
// Measured: bit-identical to upstream on random, random-init-HRNet and crafted plateau maps.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common.h"

// No silent FMA contraction: CMakeLists.txt builds every op with -ffp-contract=off, and the
// float32 sequences below must round exactly where the reference implementations do.

namespace py = pybind11;

namespace {

enum class Refine { kDark, kQuarter, kNone };

Refine parse_refine(const std::string& mode) {
  if (mode == "dark") return Refine::kDark;
  if (mode == "quarter") return Refine::kQuarter;
  if (mode == "none") return Refine::kNone;
  afd::fail("mode must be 'dark', 'quarter' or 'none', got '", mode, "'");
}

// cv::getGaussianKernel(ksize, sigma=0, CV_32F): fixed tables up to 9 taps (OpenCV 4.x and 5.x), else sampled
// exp(-x^2 / (2 sigma^2)) with sigma = 0.3 * ((ksize - 1) / 2 - 1) + 0.8, normalised in double.
std::vector<float> gaussian_kernel(int ksize) {
  std::vector<float> k(static_cast<size_t>(ksize));
  if (ksize == 3) {
    k = {0.25f, 0.5f, 0.25f};
  } else if (ksize == 5) {
    k = {0.0625f, 0.25f, 0.375f, 0.25f, 0.0625f};
  } else if (ksize == 7) {
    k = {0.03125f, 0.109375f, 0.21875f, 0.28125f, 0.21875f, 0.109375f, 0.03125f};
  } else if (ksize == 9) {
    k = {4 / 256.f, 13 / 256.f, 30 / 256.f, 51 / 256.f, 60 / 256.f, 51 / 256.f, 30 / 256.f, 13 / 256.f, 4 / 256.f};
  } else {
    const double sigma = ((ksize - 1) * 0.5 - 1) * 0.3 + 0.8;
    const double scale2 = -0.5 / (sigma * sigma);
    std::vector<double> t(static_cast<size_t>(ksize));
    double sum = 0;
    for (int i = 0; i < ksize; ++i) {
      const double x = i - (ksize - 1) * 0.5;
      t[static_cast<size_t>(i)] = std::exp(scale2 * x * x);
      sum += t[static_cast<size_t>(i)];
    }
    for (int i = 0; i < ksize; ++i) k[static_cast<size_t>(i)] = static_cast<float>(t[static_cast<size_t>(i)] / sum);
  }
  return k;
}

// Which channel of the flipped heatmaps lands on channel k after flip_back: pairs are applied in
// order, each reading the un-swapped input, so the last pair naming k wins (as upstream).
std::vector<int64_t> flip_sources(int64_t num_k, const int64_t* pairs, int64_t num_pairs) {
  std::vector<int64_t> src(static_cast<size_t>(num_k));
  for (int64_t k = 0; k < num_k; ++k) src[static_cast<size_t>(k)] = k;
  for (int64_t p = 0; p < num_pairs; ++p) {
    const int64_t left = pairs[2 * p], right = pairs[2 * p + 1];
    src[static_cast<size_t>(left)] = right;
    src[static_cast<size_t>(right)] = left;
  }
  return src;
}

// merged[y][x] = (map[y][x] + back[y][x]) / 2, back = the flipped map mirrored in x (column
// W-1-x), shifted right by one column when `shift` (column 0 keeps its unshifted value).
void merge_one(const float* map, const float* flipped_map, int64_t h, int64_t w, bool shift, float* out) {
  for (int64_t y = 0; y < h; ++y) {
    const float* a = map + y * w;
    const float* f = flipped_map + y * w;
    float* o = out + y * w;
    for (int64_t x = 0; x < w; ++x) {
      const int64_t from = (shift && x > 0) ? x - 1 : x;  // column of the flipped-back map
      const float back = f[w - 1 - from];
      o[x] = (a[x] + back) / 2.f;
    }
  }
}

struct Peak {
  int64_t index;  // row-major; the first maximum (or the first NaN, as np.argmax)
  float value;
};

Peak argmax(const float* map, int64_t size) {
  Peak best{0, map[0]};
  if (std::isnan(best.value)) return best;
  for (int64_t i = 1; i < size; ++i) {
    const float v = map[i];
    if (std::isnan(v)) return Peak{i, v};
    if (v > best.value) best = Peak{i, v};
  }
  return best;
}


// OpenCV's float32 separable filter processes the padded image in 8-float vectors; the last
// (padded width % 8) columns of the column pass are done 4-wide or scalar with mul + add, not fma.
constexpr int64_t kOpenCVLanes = 8;

// Zero-padded separable Gaussian blur of one (h, w) float32 map, rounded like upstream's
// cv2.GaussianBlur(np.pad(map, r), (ksize, ksize), 0) (OpenCV 5, AVX2/FMA dispatch; the zero
// padding hides OpenCV's own border rule):
//  - rows: taps accumulated left to right with fma; ksize 3 and 5 (OpenCV's small symmetric row
//    filter): k[r+1] * (pair 1), fma with the centre, then fma with pair 2,
//  - columns: k[r] * centre, then fma(k[r+j], up_j + down_j, acc) for j = 1..r, except on the
//    padded-width tail (see kOpenCVLanes) where the product is rounded before the add.
// Verified against cv2 for ksize 3 to 21 and widths 3..79: 0 differing floats.
// Pixel loops of the blur on non-aliasing rows, so that the compiler vectorises them.
AFD_INLINE void fma_taps(float* __restrict dst, const float* __restrict src, float k, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = std::fma(k, src[x], dst[x]);
}

AFD_INLINE void small_row(float* __restrict dst, const float* __restrict c, const float* k, int64_t r,
                          int64_t n) {  // c: the centre taps, c[-r .. n + r) readable
  const float k0 = k[r], k1 = k[r + 1];
  for (int64_t x = 0; x < n; ++x) dst[x] = std::fma(c[x], k0, k1 * (c[x - 1] + c[x + 1]));
  if (r == 2) {
    const float k2 = k[r + 2];
    for (int64_t x = 0; x < n; ++x) dst[x] = std::fma(c[x + 2] + c[x - 2], k2, dst[x]);
  }
}

AFD_INLINE void column_pair(float* __restrict dst, const float* __restrict up, const float* __restrict down, float k,
                            int64_t fma_n, int64_t n) {
  for (int64_t x = 0; x < fma_n; ++x) dst[x] = std::fma(k, up[x] + down[x], dst[x]);
  for (int64_t x = fma_n; x < n; ++x) dst[x] = dst[x] + k * (up[x] + down[x]);
}

AFD_INLINE void blur_map_impl(const float* map, int64_t h, int64_t w, const float* k, int64_t taps,
                              std::vector<float>& tmp, float* out) {
  const int64_t r = taps / 2;
  // tmp: h row-filtered rows, one zero row (the padding rows of the column pass), one padded input row.
  tmp.assign(static_cast<size_t>(h * w + w + w + 2 * r), 0.f);
  const float* zeros = tmp.data() + h * w;
  float* padded = tmp.data() + h * w + w;
  for (int64_t y = 0; y < h; ++y) {
    std::copy(map + y * w, map + (y + 1) * w, padded + r);
    float* dst = tmp.data() + y * w;
    if (taps <= 5) {  // OpenCV's small symmetric row filter: pair 1, centre, then pair 2
      small_row(dst, padded + r, k, r, w);
      continue;
    }
    for (int64_t j = 0; j < taps; ++j) fma_taps(dst, padded + j, k[j], w);  // dst starts at 0
  }
  const int64_t padded_w = w + 2 * r;
  const int64_t fma_w = std::clamp<int64_t>(padded_w - padded_w % kOpenCVLanes - r, 0, w);
  for (int64_t y = 0; y < h; ++y) {
    float* dst = out + y * w;
    const float* centre = tmp.data() + y * w;
    for (int64_t x = 0; x < w; ++x) dst[x] = k[r] * centre[x];
    for (int64_t j = 1; j <= r; ++j) {
      const bool has_up = y - j >= 0, has_down = y + j < h;
      if (!has_up && !has_down) continue;  // fma(k, 0 + 0, acc) == acc
      const float* up = has_up ? tmp.data() + (y - j) * w : zeros;
      const float* down = has_down ? tmp.data() + (y + j) * w : zeros;
      column_pair(dst, up, down, k[r + j], fma_w, w);
    }
  }
}

void blur_map_generic(const float* map, int64_t h, int64_t w, const float* k, int64_t taps, std::vector<float>& tmp,
                      float* out) {
  blur_map_impl(map, h, w, k, taps, tmp, out);
}

#if AFD_FMA_CLONE
// Same code for CPUs with FMA: std::fma becomes one instruction instead of a libm call. fma is
// correctly rounded either way, so the results are identical.
__attribute__((target("avx2,fma"))) void blur_map_fma(const float* map, int64_t h, int64_t w, const float* k,
                                                      int64_t taps, std::vector<float>& tmp, float* out) {
  blur_map_impl(map, h, w, k, taps, tmp, out);
}

bool cpu_has_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

void blur_map(const float* map, int64_t h, int64_t w, const std::vector<float>& k, std::vector<float>& tmp,
              float* out) {
  const int64_t taps = static_cast<int64_t>(k.size());
#if AFD_FMA_CLONE
  if (cpu_has_fma()) return blur_map_fma(map, h, w, k.data(), taps, tmp, out);
#endif
  blur_map_generic(map, h, w, k.data(), taps, tmp, out);
}

uint32_t float_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

float bits_float(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// numpy's float32 np.log on x86-64 with AVX2/FMA3 or AVX512F (its SIMD loop; libm's logf differs by
// an ulp on ~14% of inputs): x = m * 2^e with m in (sqrt(1/2), sqrt(2)], then
// log(x) = e * ln2 + P(m - 1) / Q(m - 1), degree-5 rational, Horner with fma.
float numpy_logf(float x) {
  if (std::isnan(x)) return x;
  if (x < 0.f) return -std::numeric_limits<float>::quiet_NaN();
  if (x == 0.f) return -std::numeric_limits<float>::infinity();
  if (std::isinf(x)) return x;
  float e_shift = 0.f;
  if (x < std::numeric_limits<float>::min()) {  // subnormal: scale by 2^100 first
    x *= bits_float(0x71800000u);
    e_shift = 100.f;
  }
  const uint32_t bits = float_bits(x);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 126) - e_shift;
  float m = bits_float((bits & 0x007fffffu) | (126u << 23));  // [0.5, 1)
  if (m <= 0.707106781186547524400844362104849039f) {
    m = m + m;
    e = e - 1.f;
  }
  const float y = m - 1.f;
  constexpr float p[6] = {0.000000000000000000000e+00f, 9.999999999999998702752e-01f,
                          2.112677543073053063722e+00f, 1.480000633576506585156e+00f,
                          3.808837741388407920751e-01f, 2.589979117907922693523e-02f};
  constexpr float q[6] = {1.000000000000000000000e+00f, 2.612677543073109236779e+00f,
                          2.453006071784736363091e+00f, 9.864942958519418960339e-01f,
                          1.546476374983906719538e-01f, 5.875095403124574342950e-03f};
  float num = p[5], den = q[5];
  for (int i = 4; i >= 0; --i) {
    num = std::fma(num, y, p[i]);
    den = std::fma(den, y, q[i]);
  }
  return std::fma(e, 0.693147180559945309417232121458176568f, num / den);
}

// numpy float32 scalar `v ** 2`: libm powf, which is not always the correctly rounded v * v.
// The volatile exponent keeps the compiler from folding powf(v, 2) into v * v.
float numpy_square(float v) {
  volatile float two = 2.f;
  return std::pow(v, static_cast<float>(two));
}

// np.linalg.inv of the float32 symmetric [[a, b], [b, d]] as numpy returns it: LAPACK gesv
// (partial-pivoting LU, reciprocal-scaled multiplier and diagonal) in double, rounded to float32.
// Returns false where LAPACK finds an exactly zero pivot (numpy raises LinAlgError there).
bool inverse_like_numpy(float a32, float b32, float d32, float inv[4]) {
  double a00 = a32, a01 = b32, a10 = b32, a11 = d32;
  const bool swap = std::fabs(a10) > std::fabs(a00);  // first maximum wins, as i?amax
  if (swap) {
    std::swap(a00, a10);
    std::swap(a01, a11);
  }
  if (a00 == 0.0) return false;
  const double r00 = 1.0 / a00;
  const double l = a10 * r00;
  const double u11 = a11 - l * a01;
  if (u11 == 0.0) return false;
  const double r11 = 1.0 / u11;
  for (int c = 0; c < 2; ++c) {
    const double b0 = (swap ? c == 1 : c == 0) ? 1.0 : 0.0;  // column c of P * I
    const double b1 = 1.0 - b0;
    const double x1 = (b1 - l * b0) * r11;
    const double x0 = (b0 - a01 * x1) * r00;
    inv[c] = static_cast<float>(x0);
    inv[2 + c] = static_cast<float>(x1);
  }
  return true;
}

// The DARK (unbiased) offset at integer peak (px, py), 2 <= px <= W-3 and 2 <= py <= H-3:
// log of the blurred map rescaled to the original peak height, one Newton step, all rounded
// as upstream's numpy float32 code. Returns false (no offset) where upstream's float32 Hessian
// determinant is 0 (or its LAPACK inverse would raise).
bool dark_offset(const float* map, int64_t h, int64_t w, int64_t px, int64_t py, float orig_max,
                 const std::vector<float>& kernel, std::vector<float>& tmp, std::vector<float>& blurred,
                 float& off_x, float& off_y) {
  blurred.resize(static_cast<size_t>(h * w));
  blur_map(map, h, w, kernel, tmp, blurred.data());
  float bmax = blurred[0];  // np.max: NaN if any is NaN
  bool any_nan = false;
  for (int64_t i = 0; i < h * w; ++i) {
    const float v = blurred[static_cast<size_t>(i)];
    any_nan |= v != v;
    bmax = v > bmax ? v : bmax;
  }
  if (any_nan) bmax = std::numeric_limits<float>::quiet_NaN();
  const float ratio = orig_max / bmax;
  auto lg = [&](int64_t xx, int64_t yy) {
    float v = blurred[static_cast<size_t>(yy * w + xx)] * ratio;
    if (!std::isnan(v) && v < 1e-10f) v = 1e-10f;
    return numpy_logf(v);
  };
  const float c = lg(px, py);
  const float dx = 0.5f * (lg(px + 1, py) - lg(px - 1, py));
  const float dy = 0.5f * (lg(px, py + 1) - lg(px, py - 1));
  const float dxx = 0.25f * ((lg(px + 2, py) - 2.f * c) + lg(px - 2, py));
  const float dxy = 0.25f * (((lg(px + 1, py + 1) - lg(px + 1, py - 1)) - lg(px - 1, py + 1)) + lg(px - 1, py - 1));
  const float dyy = 0.25f * ((lg(px, py + 2) - 2.f * c) + lg(px, py - 2));
  const float det32 = dxx * dyy - numpy_square(dxy);
  if (!(det32 != 0.f)) return false;  // NaN passes, as numpy's `!= 0` does
  float inv[4];
  if (!inverse_like_numpy(dxx, dxy, dyy, inv)) return false;
  // offset = -inv @ [dx, dy] in float32: products rounded, then summed.
  off_x = -(inv[0] * dx + inv[1] * dy);
  off_y = -(inv[2] * dx + inv[3] * dy);
  return true;
}

// 0.25 * np.sign(diff): NaN (e.g. inf - inf beside the peak) stays NaN, as upstream's numpy.
float sign_quarter(float diff) {
  if (std::isnan(diff)) return diff;
  return diff > 0.f ? 0.25f : (diff < 0.f ? -0.25f : 0.f);
}

// Bounds that keep a bad argument from allocating gigabytes or starting thousands of threads:
// upstream's kernel is 11 (sigma 2); more than one thread per core buys nothing.
constexpr int kMaxBlurKernel = 1023;
constexpr int kMaxThreads = 256;

struct HeatmapShape {
  int64_t n, k, h, w;
};

HeatmapShape heatmap_shape(const py::array& a, const char* name) {
  afd::expect_ndim(a, 4, name);
  HeatmapShape s{a.shape(0), a.shape(1), a.shape(2), a.shape(3)};
  if (s.k < 1 || s.h < 1 || s.w < 1) afd::fail(name, " must have K, H, W >= 1, got shape ", afd::shape_str(a));
  return s;
}

py::array_t<int64_t, py::array::c_style> checked_pairs(const py::handle& obj, int64_t num_k) {
  auto pairs = afd::expect_array<int64_t>(obj, "flip_pairs");
  if (pairs.ndim() != 2 || pairs.shape(1) != 2) {
    afd::fail("flip_pairs must have shape (P, 2), got ", afd::shape_str(pairs));
  }
  const int64_t* p = pairs.data();
  for (int64_t i = 0; i < 2 * pairs.shape(0); ++i) {
    if (p[i] < 0 || p[i] >= num_k) {
      afd::fail("flip_pairs[", i / 2, "] = (", p[i - i % 2], ", ", p[i - i % 2 + 1], ") is out of range for K = ", num_k);
    }
  }
  return pairs;
}

void check_flipped(const py::array& flipped, const py::array& heatmaps) {
  if (flipped.ndim() != 4 || flipped.shape(0) != heatmaps.shape(0) || flipped.shape(1) != heatmaps.shape(1) ||
      flipped.shape(2) != heatmaps.shape(2) || flipped.shape(3) != heatmaps.shape(3)) {
    afd::fail("flipped must have the shape of heatmaps ", afd::shape_str(heatmaps), ", got ", afd::shape_str(flipped));
  }
}

py::array_t<float> merge_flip(const py::handle& heatmaps_obj, const py::handle& flipped_obj,
                              const py::handle& pairs_obj, bool shift) {
  auto heatmaps = afd::expect_array<float>(heatmaps_obj, "heatmaps");
  const HeatmapShape s = heatmap_shape(heatmaps, "heatmaps");
  auto flipped = afd::expect_array<float>(flipped_obj, "flipped");
  check_flipped(flipped, heatmaps);
  auto pairs = checked_pairs(pairs_obj, s.k);
  py::array_t<float> out({s.n, s.k, s.h, s.w});
  if (s.n == 0) return out;
  const std::vector<int64_t> src = flip_sources(s.k, pairs.data(), pairs.shape(0));
  const float* hm = heatmaps.data();
  const float* fl = flipped.data();
  float* dst = out.mutable_data();
  const int64_t plane = s.h * s.w;
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < s.n * s.k; ++i) {
      const int64_t n = i / s.k, k = i % s.k;
      merge_one(hm + i * plane, fl + (n * s.k + src[static_cast<size_t>(k)]) * plane, s.h, s.w, shift,
                dst + i * plane);
    }
  }
  return out;
}

py::array_t<float> decode_heatmaps(const py::handle& heatmaps_obj, const py::handle& centers_obj,
                                   const py::handle& sizes_obj, const std::string& mode, int blur_kernel,
                                   const py::handle& flipped_obj, const py::handle& pairs_obj, bool shift,
                                   int threads) {
  const Refine refine = parse_refine(mode);
  auto heatmaps = afd::expect_array<float>(heatmaps_obj, "heatmaps");
  const HeatmapShape s = heatmap_shape(heatmaps, "heatmaps");
  auto centers = afd::expect_array<float>(centers_obj, "centers");
  auto sizes = afd::expect_array<float>(sizes_obj, "box_sizes");
  if (centers.ndim() != 2 || centers.shape(0) != s.n || centers.shape(1) != 2) {
    afd::fail("centers must have shape (", s.n, ", 2), got ", afd::shape_str(centers));
  }
  if (sizes.ndim() != 2 || sizes.shape(0) != s.n || sizes.shape(1) != 2) {
    afd::fail("box_sizes must have shape (", s.n, ", 2), got ", afd::shape_str(sizes));
  }
  if (refine == Refine::kDark && (blur_kernel < 3 || blur_kernel % 2 == 0 || blur_kernel > kMaxBlurKernel)) {
    afd::fail("blur_kernel must be odd and >= 3 (upstream cannot pad by 0) and <= ", kMaxBlurKernel, ", got ",
              blur_kernel);
  }
  if (threads < 0 || threads > kMaxThreads) {
    afd::fail("threads must be in [0, ", kMaxThreads, "] (0: one per core), got ", threads);
  }
  std::optional<py::array_t<float, py::array::c_style>> flipped;
  std::vector<int64_t> src;
  if (!flipped_obj.is_none()) {
    flipped = afd::expect_array<float>(flipped_obj, "flipped");
    check_flipped(*flipped, heatmaps);
    if (pairs_obj.is_none()) {
      src = flip_sources(s.k, nullptr, 0);
    } else {
      auto pairs = checked_pairs(pairs_obj, s.k);
      src = flip_sources(s.k, pairs.data(), pairs.shape(0));
    }
  } else if (!pairs_obj.is_none()) {
    afd::fail("flip_pairs was given without flipped heatmaps");
  }

  py::array_t<float> out({s.n, s.k, int64_t{3}});
  if (s.n == 0) return out;
  const std::vector<float> kernel = refine == Refine::kDark ? gaussian_kernel(blur_kernel) : std::vector<float>{};
  const float* hm = heatmaps.data();
  const float* fl = flipped ? flipped->data() : nullptr;
  const float* ctr = centers.data();
  const float* box = sizes.data();
  float* dst = out.mutable_data();
  const int64_t h = s.h, w = s.w, plane = s.h * s.w;
  {
    py::gil_scoped_release release;
    afd::parallel_for(s.n * s.k, threads, [&](int64_t i) {
      thread_local std::vector<float> merged, tmp, blurred;
      const int64_t n = i / s.k, k = i % s.k;
      const float* map = hm + i * plane;
      if (fl != nullptr) {
        merged.resize(static_cast<size_t>(plane));
        merge_one(map, fl + (n * s.k + src[static_cast<size_t>(k)]) * plane, h, w, shift, merged.data());
        map = merged.data();
      }
      const Peak peak = argmax(map, plane);
      float x = -1.f, y = -1.f;
      if (peak.value > 0.f) {
        x = static_cast<float>(peak.index % w);
        y = static_cast<float>(peak.index / w);
      }
      const int64_t px = static_cast<int64_t>(x), py = static_cast<int64_t>(y);
      if (refine == Refine::kDark && 1 < px && px < w - 2 && 1 < py && py < h - 2) {
        float ox = 0.f, oy = 0.f;
        if (dark_offset(map, h, w, px, py, peak.value, kernel, tmp, blurred, ox, oy)) {
          x += ox;
          y += oy;
        }
      } else if (refine == Refine::kQuarter && 1 < px && px < w - 1 && 1 < py && py < h - 1) {
        x += sign_quarter(map[py * w + px + 1] - map[py * w + px - 1]);
        y += sign_quarter(map[(py + 1) * w + px] - map[(py - 1) * w + px]);
      }
      // transform_preds: image = heatmap * (box / size) + center - box / 2, each op in float32.
      const float bw = box[2 * n], bh = box[2 * n + 1];
      const float scale_x = bw / static_cast<float>(w), scale_y = bh / static_cast<float>(h);
      float* o = dst + i * 3;
      o[0] = (x * scale_x + ctr[2 * n]) - bw * 0.5f;
      o[1] = (y * scale_y + ctr[2 * n + 1]) - bh * 0.5f;
      o[2] = peak.value;
    });
  }
  return out;
}

}  // namespace

void register_heatmap_decode(py::module_& m) {
  m.def("merge_flip", &merge_flip, py::arg("heatmaps"), py::arg("flipped"), py::arg("flip_pairs"),
        py::arg("shift"), "Flip-test merge (heatmaps + shift(flip_back(flipped))) / 2, float32 (N, K, H, W).");
  m.def("decode_heatmaps", &decode_heatmaps, py::arg("heatmaps"), py::arg("centers"), py::arg("box_sizes"),
        py::arg("mode"), py::arg("blur_kernel"), py::arg("flipped"), py::arg("flip_pairs"), py::arg("shift"),
        py::arg("threads"), "Heatmaps (N, K, H, W) to keypoints (N, K, 3) = (x, y, score) in image pixels.");
}
