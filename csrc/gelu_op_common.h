// Host-side pieces every backend's op implementation shares: argument checks with clear messages, and the
// layout rule that lets a kernel treat its operands as flat arrays.
#pragma once

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>

#include <string_view>

#include "gelu_math.h"

namespace gelu_ext {

inline Approximate parse_approximate(std::string_view approximate, const char* op) {
  if (approximate == "none") return Approximate::kNone;
  if (approximate == "tanh") return Approximate::kTanh;
  TORCH_CHECK_VALUE(false, op, ": approximate must be \"none\" or \"tanh\", got \"", approximate, "\"");
}

inline bool is_supported_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
}

inline void check_input(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), op, ": ", name, " has dtype ", t.scalar_type(),
                   ", but only float32, float64, float16 and bfloat16 are supported");
}

inline void check_same(const at::Tensor& grad_output, const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(grad_output.sizes() == x.sizes(), op, ": grad_output has shape ", grad_output.sizes(),
                    " but x has shape ", x.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == x.scalar_type(), op, ": grad_output has dtype ",
                   grad_output.scalar_type(), " but x has dtype ", x.scalar_type());
  TORCH_CHECK(grad_output.device() == x.device(), op, ": grad_output is on ", grad_output.device(),
              " but x is on ", x.device());
}

// The output has F.gelu's layout (TensorIterator's rule): dense, with its dimensions in the order of x's
// strides, so a transposed or channels_last x gives a transposed or channels_last result. An input laid out
// differently is copied into the output's layout. Then element i of every operand's storage span is the same
// logical element, and the kernels run over flat spans of numel() elements: one pass, no index arithmetic.
inline at::Tensor empty_output_like(const at::Tensor& x) {
  if (x.numel() == 0) return at::empty(x.sizes(), x.options());
  return at::empty_strided(x.sizes(), at::infer_dense_strides(x.sizes(), x.strides()), x.options());
}

// Same storage order: equal strides wherever the size is above 1 (a size-1 dimension's stride is never used).
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

inline at::Tensor with_layout_of(const at::Tensor& t, const at::Tensor& out) {
  return same_layout(t, out) ? t : at::empty_like(out).copy_(t);
}

// The checked operands of one call, with the output allocated and the inputs in its layout.
struct Operands {
  at::Tensor out;
  at::Tensor x;
  at::Tensor grad;  // undefined for the forward op
  Approximate mode;
};

inline Operands prepare_forward(const at::Tensor& x, c10::string_view approximate) {
  constexpr const char* kOp = "gelu_ext.gelu";
  check_input(x, kOp, "x");
  const Approximate mode = parse_approximate(approximate, kOp);
  at::Tensor out = empty_output_like(x);
  at::Tensor x_laid_out = with_layout_of(x, out);
  return {std::move(out), std::move(x_laid_out), at::Tensor(), mode};
}

inline Operands prepare_backward(const at::Tensor& grad, const at::Tensor& x, c10::string_view approximate) {
  constexpr const char* kOp = "gelu_ext.gelu_backward";
  check_input(grad, kOp, "grad_output");
  check_input(x, kOp, "x");
  check_same(grad, x, kOp);
  const Approximate mode = parse_approximate(approximate, kOp);
  at::Tensor out = empty_output_like(x);
  at::Tensor x_laid_out = with_layout_of(x, out);
  at::Tensor grad_laid_out = with_layout_of(grad, out);
  return {std::move(out), std::move(x_laid_out), std::move(grad_laid_out), mode};
}

}  // namespace gelu_ext
