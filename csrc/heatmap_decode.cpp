// Placeholder: the op lands in a following commit.
#include <pybind11/pybind11.h>
void register_heatmap_decode(pybind11::module_& m) { (void)m; }
