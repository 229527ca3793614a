// The op schemas (defined once, here) and the `_C` Python module with build information.
// Backends register their kernels in their own files: csrc/cpu/gelu_cpu.cpp, csrc/cuda/gelu_cuda.cpp.
// Fake (meta) kernels and autograd are registered in Python: gelu_ext/ops.py.
#include <torch/library.h>
#include <torch/extension.h>

#include <string>

#include "gelu_op_common.h"

TORCH_LIBRARY(gelu_ext, m) {
  m.def("gelu(Tensor x, str approximate=\"none\") -> Tensor");
  m.def("gelu_backward(Tensor grad_output, Tensor x, str approximate=\"none\") -> Tensor");
}

#ifndef GELU_EXT_WITH_CUDA
// Without CUDA kernels the dispatcher's own message ("Could not run ... with arguments from the 'CUDA'
// backend") does not say what to do; this one does.
namespace {
[[noreturn]] void cuda_not_built() {
  TORCH_CHECK(false,
              "gelu_ext was built without CUDA kernels, so it cannot run on a CUDA tensor. Rebuild it on a machine "
              "with the CUDA toolkit (nvcc, CUDA_HOME) and a CUDA build of torch: "
              "GELU_EXT_FORCE_CUDA=1 pip install --no-build-isolation --force-reinstall --no-deps "
              "<path to a gelu_ext checkout or sdist>");
}
at::Tensor gelu_no_cuda(const at::Tensor&, c10::string_view) { cuda_not_built(); }
at::Tensor gelu_backward_no_cuda(const at::Tensor&, const at::Tensor&, c10::string_view) { cuda_not_built(); }
}  // namespace

TORCH_LIBRARY_IMPL(gelu_ext, CUDA, m) {
  m.impl("gelu", &gelu_no_cuda);
  m.impl("gelu_backward", &gelu_backward_no_cuda);
}
#endif

namespace gelu_ext {
std::string cpu_capability();  // csrc/cpu/gelu_cpu.cpp
void set_cpu_capability(const std::string& name);
}  // namespace gelu_ext

PYBIND11_MODULE(_C, m) {
  m.doc() = "gelu_ext compiled core: registers torch.ops.gelu_ext.* and reports how it was built";
#ifdef GELU_EXT_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_version") = GELU_EXT_CUDA_VERSION;
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_version") = pybind11::none();
#endif
  m.def("cpu_capability", &gelu_ext::cpu_capability,
        "The instruction set the CPU kernels run with: avx512, avx2 or baseline");
  m.def("set_cpu_capability", &gelu_ext::set_cpu_capability,
        "Force the CPU kernels' instruction set (for tests and benchmarks); results are bit-identical");
}
