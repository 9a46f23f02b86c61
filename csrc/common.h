// Shared helpers for the afd_trt ops: argument validation that names the bad value,
// and a small parallel_for over std::thread. Ops take numpy arrays, never torch tensors.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <exception>
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

// Runs fn(0) .. fn(n - 1) in up to `threads` contiguous chunks, one std::thread each (the
// calling thread waits). Call with the GIL released; fn must not touch Python objects.
// Never terminates the process: a thread that cannot be started (a process or memory limit)
// leaves its chunks to the calling thread, and an exception thrown by fn in any thread is
// rethrown here after every started thread has been joined (the first one by chunk; pybind11
// turns std::bad_alloc into MemoryError, others into RuntimeError).
template <typename Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  if (n <= 0) return;
  if (threads <= 0) threads = default_threads();
  const int64_t t = std::min<int64_t>(threads, n);
  if (t <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  const int64_t chunk = (n + t - 1) / t;
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
  auto run = [chunk, n, &fn, &errors](int64_t w) {
    try {
      for (int64_t i = w * chunk, end = std::min(n, (w + 1) * chunk); i < end; ++i) fn(i);
    } catch (...) {
      errors[static_cast<size_t>(w)] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(chunks));  // so a failed start leaves pool as it was
  int64_t w = 0;
  for (; w < chunks; ++w) {
    try {
      pool.emplace_back(run, w);
    } catch (...) {
      break;  // no thread for chunk w: this thread runs it and the rest
    }
  }
  for (; w < chunks; ++w) run(w);
  for (auto& th : pool) th.join();
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace afd
