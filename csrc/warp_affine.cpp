// Placeholder: the op lands in a following commit.
#include <pybind11/pybind11.h>
void register_warp_affine(pybind11::module_& m) { (void)m; }
