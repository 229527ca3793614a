// CPU kernels for gelu_ext::geglu and gelu_ext::geglu_backward: the shared loop (elementwise_cpu.h) over gate and up
// as rows of their last dimension, each with its own row stride, so the two halves of x.chunk(2, dim=-1) are read in
// place.
//
// Memory traffic per element (float32): forward reads gate and up and writes y, 12 bytes (eager
// F.gelu(gate) * up: 20, gelu(gate) written and read back); backward reads grad, gate and up and writes grad_gate and
// grad_up, 20 bytes (eager: 36, in three passes).
#include <torch/csrc/stable/library.h>

#include <string_view>
#include <tuple>
#include <type_traits>

#include "elementwise_cpu.h"

namespace gelu_ext::cpu {
namespace {

Tensor geglu_cpu(const Tensor& gate, const Tensor& up, std::string_view approximate) {
  const RowOperands ops = prepare_geglu(nullptr, gate, up, approximate);
  Tensor out = empty_contiguous_like(gate);
  dispatch_floating(gate.scalar_type(), [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    dispatch_mode(ops.mode, [&](auto mode) {
      run_rows<GegluForward<mode()>>(ops.rows, ops.cols, data_of<scalar_t>(out), static_cast<scalar_t*>(nullptr),
                                     rows_in<scalar_t>(ops.inputs[0]), rows_in<scalar_t>(ops.inputs[1]));
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> geglu_backward_cpu(const Tensor& grad, const Tensor& gate, const Tensor& up,
                                              std::string_view approximate) {
  const RowOperands ops = prepare_geglu(&grad, gate, up, approximate);
  Tensor grad_gate = empty_contiguous_like(gate);
  Tensor grad_up = empty_contiguous_like(up);
  dispatch_floating(gate.scalar_type(), [&](auto* type_tag) {
    using scalar_t = std::remove_pointer_t<decltype(type_tag)>;
    dispatch_mode(ops.mode, [&](auto mode) {
      run_rows<GegluBackward<mode()>>(ops.rows, ops.cols, data_of<scalar_t>(grad_gate), data_of<scalar_t>(grad_up),
                                      rows_in<scalar_t>(ops.inputs[0]), rows_in<scalar_t>(ops.inputs[1]),
                                      rows_in<scalar_t>(ops.inputs[2]));
    });
  });
  return {grad_gate, grad_up};
}

}  // namespace
}  // namespace gelu_ext::cpu

STABLE_TORCH_LIBRARY_IMPL(gelu_ext, CPU, m) {
  m.impl("geglu", TORCH_BOX(&gelu_ext::cpu::geglu_cpu));
  m.impl("geglu_backward", TORCH_BOX(&gelu_ext::cpu::geglu_backward_cpu));
}
