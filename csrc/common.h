// Shared helpers for the afd_trt ops: argument validation that names the bad value,
// and a small parallel_for over std::thread. Ops take numpy arrays, never torch tensors.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

// x86-64 builds use portable flags; hot loops that need FMA get a runtime-dispatched AVX2/FMA
// clone (target_clones) chosen on CPUs that have it, with identical results on both paths.
#if defined(__GNUC__) && defined(__x86_64__)
#define AFD_FMA_CLONE 1
#define AFD_INLINE inline __attribute__((always_inline))
#else
#define AFD_FMA_CLONE 0
#define AFD_INLINE inline
#endif

namespace afd {

namespace py = pybind11;

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw py::value_error(cat(args...));
}

inline std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) os << (i ? ", " : "") << a.shape(i);
  if (a.ndim() == 1) os << ",";
  os << ")";
  return os.str();
}

// Checks dtype and C-contiguity without converting: a silent cast hides caller bugs.
template <typename T>
py::array_t<T, py::array::c_style> expect_array(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    fail(name, " must be a numpy array, got ", std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  auto arr = py::reinterpret_borrow<py::array>(obj);
  // Equivalence, not identity: an array that went through pickle (multiprocessing, Ray, ...)
  // carries its own float32/uint8 descriptor object; a non-native byte order is not equivalent.
  if (!py::detail::npy_api::get().PyArray_EquivTypes_(py::dtype::of<T>().ptr(), arr.dtype().ptr())) {
    fail(name, " must have dtype ", std::string(py::str(py::dtype::of<T>())), ", got ",
         std::string(py::str(arr.dtype())));
  }
  if (!(arr.flags() & py::array::c_style)) {
    fail(name, " must be C-contiguous (use np.ascontiguousarray), got strides that are not");
  }
  return py::array_t<T, py::array::c_style>::ensure(arr);
}

inline void expect_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim) fail(name, " must be ", ndim, "-D, got ", a.ndim(), "-D with shape ", shape_str(a));
}

inline int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(std::min(n, 64u));
}

// Runs fn(i) for i in [0, n) on up to `threads` threads (static contiguous chunks).
// Call with the GIL released; fn must not touch Python objects.
template <typename Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  if (n <= 0) return;
  if (threads <= 0) threads = default_threads();
  const int64_t t = std::min<int64_t>(threads, n);
  if (t <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(t));
  const int64_t chunk = (n + t - 1) / t;
  for (int64_t w = 0; w < t; ++w) {
    const int64_t begin = w * chunk;
    const int64_t end = std::min(n, begin + chunk);
    if (begin >= end) break;
    pool.emplace_back([begin, end, &fn] {
      for (int64_t i = begin; i < end; ++i) fn(i);
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace afd
