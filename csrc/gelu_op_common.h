// Host-side pieces every backend's op implementation shares: argument checks with clear messages, and the
// layout rule that lets a kernel treat its operands as flat arrays.
//
// Only the LibTorch stable ABI is used (torch/csrc/stable, torch/headeronly): the compiled library calls libtorch
// through its versioned C shim, so one build loads on every torch from the TORCH_TARGET_VERSION that setup.py sets
// (2.10) on. Errors are std::runtime_error (see check below).
#pragma once

#include <torch/csrc/stable/device.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gelu_math.h"

namespace gelu_ext {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// ---- Errors -------------------------------------------------------------------------------------------------------

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  ((out << args), ...);
  return std::move(out).str();
}

// Every error is a std::runtime_error, RuntimeError in Python. The stable ABI carries only standard exceptions, and
// how the dispatcher translates the others differs between torch releases (std::invalid_argument became ValueError
// with torch 2.14 and RuntimeError with 2.15), so the kernels use one type everywhere; the Python API checks the
// values first and raises ValueError (gelu_ext/ops.py).
template <typename... Args>
inline void check(bool ok, const Args&... message) {
  if (!ok) throw std::runtime_error(concat(message...));
}

inline std::string shape_string(torch::headeronly::IntHeaderOnlyArrayRef sizes) {
  std::ostringstream out;
  out << '[';
  for (size_t d = 0; d < sizes.size(); ++d) out << (d ? ", " : "") << sizes[d];
  out << ']';
  return std::move(out).str();
}

inline std::string device_string(const torch::stable::Device& device) {
  if (device.is_cpu()) return "cpu";
  if (device.is_cuda()) return concat("cuda:", static_cast<int>(device.index()));
  return concat("device type ", static_cast<int>(device.type()));
}

// ---- Arguments ----------------------------------------------------------------------------------------------------

inline Approximate parse_approximate(std::string_view approximate, const char* op) {
  if (approximate == "none") return Approximate::kNone;
  if (approximate == "tanh") return Approximate::kTanh;
  check(false, op, ": approximate must be \"none\" or \"tanh\", got \"", approximate, "\"");
  return Approximate::kNone;  // unreachable
}

inline bool is_supported_dtype(ScalarType dtype) {
  return dtype == ScalarType::Float || dtype == ScalarType::Double || dtype == ScalarType::Half ||
         dtype == ScalarType::BFloat16;
}

inline void check_input(const Tensor& t, const char* op, const char* name) {
  check(is_supported_dtype(t.scalar_type()), op, ": ", name, " has dtype ", t.scalar_type(),
        ", but only float32, float64, float16 and bfloat16 are supported");
}


inline void check_same_shape(const Tensor& a, const char* a_name, const Tensor& b, const char* b_name,
                             const char* op) {
  const auto a_sizes = a.sizes();
  const auto b_sizes = b.sizes();
  check(std::equal(a_sizes.begin(), a_sizes.end(), b_sizes.begin(), b_sizes.end()), op, ": ", a_name,
        " has shape ", shape_string(a_sizes), " but ", b_name, " has shape ", shape_string(b_sizes));
}

inline void check_same_dtype_and_device(const Tensor& a, const char* a_name, const Tensor& b, const char* b_name,
                                        const char* op) {
  check(a.scalar_type() == b.scalar_type(), op, ": ", a_name, " has dtype ", a.scalar_type(), " but ", b_name,
        " has dtype ", b.scalar_type());
  check(a.device() == b.device(), op, ": ", a_name, " is on ", device_string(a.device()), " but ", b_name, " is on ",
        device_string(b.device()));
}

// A backward's grad_output: a supported dtype, and the shape, dtype and device of the op's first input (`like`).
inline void check_grad_output(const Tensor& grad, const Tensor& like, const char* like_name, const char* op) {
  check_input(grad, op, "grad_output");
  check_same_shape(grad, "grad_output", like, like_name, op);
  check_same_dtype_and_device(grad, "grad_output", like, like_name, op);
}

// ---- Layout -------------------------------------------------------------------------------------------------------

// The output has F.gelu's layout (TensorIterator's rule): dense, with its dimensions in the order of x's strides,
// so a transposed or channels_last x gives a transposed or channels_last result. An input laid out differently is
// copied into the output's layout. Then element i of every operand's storage span is the same logical element, and
// the kernels run over flat spans of numel() elements: one pass, no index arithmetic.
//
// The storage order is at::infer_dense_strides' rule: an insertion sort of the dimensions, innermost first, by x's
// stride; a zero stride (broadcast) compares as ambiguous and stays where it is; equal strides put the smaller size
// inside.
inline std::vector<int64_t> dense_strides_like(torch::headeronly::IntHeaderOnlyArrayRef sizes,
                                               torch::headeronly::IntHeaderOnlyArrayRef strides) {
  const int64_t dims = static_cast<int64_t>(sizes.size());
  // For a placed inside b: +1 swap them, -1 keep them, 0 no preference (look further out).
  auto compare = [&](int64_t a, int64_t b) {
    if (strides[a] == 0 || strides[b] == 0) return 0;
    if (strides[a] != strides[b]) return strides[a] < strides[b] ? -1 : 1;
    return sizes[a] > sizes[b] ? 1 : 0;
  };
  std::vector<int64_t> inner_first(dims);
  for (int64_t i = 0; i < dims; ++i) inner_first[i] = dims - 1 - i;
  for (int64_t i = 1; i < dims; ++i) {
    int64_t moving = i;
    for (int64_t j = i - 1; j >= 0; --j) {
      const int c = compare(inner_first[j], inner_first[moving]);
      if (c > 0) {
        std::swap(inner_first[j], inner_first[moving]);
        moving = j;
      } else if (c < 0) {
        break;
      }
    }
  }
  std::vector<int64_t> dense(dims);
  int64_t stride = 1;
  for (const int64_t dim : inner_first) {
    dense[dim] = stride;
    stride *= std::max<int64_t>(sizes[dim], 1);
  }
  return dense;
}

inline std::vector<int64_t> contiguous_strides(torch::headeronly::IntHeaderOnlyArrayRef sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t stride = 1;
  for (size_t d = sizes.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= std::max<int64_t>(sizes[d], 1);
  }
  return strides;
}

// Allocated through the C shim's empty_strided, not torch::stable::new_empty: the latter is a boxed dispatcher call
// looked up by name, which cost ~1.5 us per op on 2^12 elements (a third of the forward kernel's time there).
inline Tensor empty_strided_like(const Tensor& like, torch::headeronly::IntHeaderOnlyArrayRef sizes,
                                 const std::vector<int64_t>& strides, ScalarType dtype) {
  int32_t device_type = 0, device_index = 0;
  AtenTensorHandle out = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(like.get(), &device_index));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(
      static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(),
      torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype)), device_type, device_index, &out));
  return Tensor(out);
}

// The output of the elementwise ops: x's shape, dtype and device, in the layout described above.
inline Tensor empty_output_like(const Tensor& x) {
  const auto sizes = x.sizes();
  const std::vector<int64_t> strides =
      x.numel() == 0 || x.is_contiguous() ? contiguous_strides(sizes) : dense_strides_like(sizes, x.strides());
  return empty_strided_like(x, sizes, strides, x.scalar_type());
}

// An uninitialized contiguous tensor of t's shape, dtype and device.
inline Tensor empty_contiguous_like(const Tensor& t) {
  return empty_strided_like(t, t.sizes(), contiguous_strides(t.sizes()), t.scalar_type());
}

// Same storage order: equal strides wherever the size is above 1 (a size-1 dimension's stride is never used).
inline bool same_layout(const Tensor& a, const Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

inline Tensor with_layout_of(const Tensor& t, const Tensor& out) {
  if (same_layout(t, out)) return t;
  Tensor copy = torch::stable::empty_like(out);
  torch::stable::copy_(copy, t);
  return copy;
}

// The checked operands of one call, with the output allocated and the inputs in its layout.
struct Operands {
  Tensor out;
  Tensor x;
  Tensor grad;  // undefined for the forward op
  Approximate mode;
};

inline Operands prepare_forward(const Tensor& x, std::string_view approximate) {
  constexpr const char* kOp = "gelu_ext.gelu";
  check_input(x, kOp, "x");
  const Approximate mode = parse_approximate(approximate, kOp);
  Tensor out = empty_output_like(x);
  Tensor x_laid_out = with_layout_of(x, out);
  return {std::move(out), std::move(x_laid_out), Tensor(), mode};
}

inline Operands prepare_backward(const Tensor& grad, const Tensor& x, std::string_view approximate) {
  constexpr const char* kOp = "gelu_ext.gelu_backward";
  check_input(x, kOp, "x");
  check_grad_output(grad, x, "x", kOp);
  const Approximate mode = parse_approximate(approximate, kOp);
  Tensor out = empty_output_like(x);
  Tensor x_laid_out = with_layout_of(x, out);
  Tensor grad_laid_out = with_layout_of(grad, out);
  return {std::move(out), std::move(x_laid_out), std::move(grad_laid_out), mode};
}

// ---- Row operands (bias_gelu, geglu) ------------------------------------------------------------------------------

// An operand of a row op seen as a matrix [rows, cols] over its last dimension: element (r, c) is at
// data[r * row_stride + c]. A contiguous tensor has row_stride == cols; one half of x.chunk(2, dim=-1) has
// 2 * cols, read in place; a bias has 0 (the same row for every r).
struct Rows {
  Tensor tensor;  // what data points into: the argument itself, or a contiguous copy of it
  int64_t row_stride;
};

// Reads t in place when its last dimension has stride 1 and its leading dimensions collapse into one row index
// with a single stride (any stride, 0 included); otherwise (a transposed matrix, a gap between dimensions) it reads a
// contiguous copy, one extra pass.
inline Rows as_rows(const Tensor& t) {
  const int64_t dims = t.dim();
  const int64_t cols = t.size(dims - 1);
  if (t.numel() == 0) return {t, cols};
  bool in_place = cols == 1 || t.stride(dims - 1) == 1;
  int64_t row_stride = -1;
  int64_t next_stride = 0;  // the stride the next outer dimension must have to continue the row index
  for (int64_t d = dims - 2; in_place && d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (row_stride < 0) {
      row_stride = t.stride(d);
    } else if (t.stride(d) != next_stride) {
      in_place = false;
    }
    next_stride = t.stride(d) * t.size(d);
  }
  if (!in_place) return {torch::stable::contiguous(t), cols};
  return {t, row_stride < 0 ? cols : row_stride};
}

// The checked operands of a row op: `rows` x `cols` elements, inputs in the op's argument order.
struct RowOperands {
  int64_t rows;
  int64_t cols;
  Approximate mode;
  std::vector<Rows> inputs;
};

inline RowOperands row_operands(const Tensor& like, std::vector<Rows> inputs, Approximate mode) {
  const int64_t cols = like.size(like.dim() - 1);
  const int64_t rows = cols == 0 ? 0 : like.numel() / cols;
  return {rows, cols, mode, std::move(inputs)};
}

// The grad_output of a row op's backward, checked, as rows.
inline Rows grad_rows(const Tensor& grad, const Tensor& like, const char* like_name, const char* op) {
  check_grad_output(grad, like, like_name, op);
  return as_rows(grad);
}

// bias_gelu(x, bias) and bias_gelu_backward(grad_output, x, bias): bias has shape [x.shape[-1]].
inline RowOperands prepare_bias_gelu(const Tensor* grad, const Tensor& x, const Tensor& bias,
                                     std::string_view approximate) {
  const char* op = grad != nullptr ? "gelu_ext.bias_gelu_backward" : "gelu_ext.bias_gelu";
  check_input(x, op, "x");
  check_input(bias, op, "bias");
  check(x.dim() >= 1, op, ": x must have at least one dimension (bias is added along the last one), got a 0-d tensor");
  const int64_t features = x.size(x.dim() - 1);
  check(bias.dim() == 1 && bias.size(0) == features, op, ": bias has shape ", shape_string(bias.sizes()),
        " but x has shape ", shape_string(x.sizes()), ": bias must have shape [", features, "]");
  check_same_dtype_and_device(bias, "bias", x, "x", op);
  std::vector<Rows> inputs;
  if (grad != nullptr) inputs.push_back(grad_rows(*grad, x, "x", op));
  const Approximate mode = parse_approximate(approximate, op);
  inputs.push_back(as_rows(x));
  inputs.push_back({bias.stride(0) == 1 ? bias : torch::stable::contiguous(bias), 0});
  return row_operands(x, std::move(inputs), mode);
}

// geglu(gate, up) and geglu_backward(grad_output, gate, up): all of one shape, at least one dimension.
inline RowOperands prepare_geglu(const Tensor* grad, const Tensor& gate, const Tensor& up,
                                 std::string_view approximate) {
  const char* op = grad != nullptr ? "gelu_ext.geglu_backward" : "gelu_ext.geglu";
  check_input(gate, op, "gate");
  check_input(up, op, "up");
  check(gate.dim() >= 1, op, ": gate and up must have at least one dimension, got 0-d tensors");
  check_same_shape(up, "up", gate, "gate", op);
  check_same_dtype_and_device(up, "up", gate, "gate", op);
  std::vector<Rows> inputs;
  if (grad != nullptr) inputs.push_back(grad_rows(*grad, gate, "gate", op));
  const Approximate mode = parse_approximate(approximate, op);
  inputs.push_back(as_rows(gate));
  inputs.push_back(as_rows(up));
  return row_operands(gate, std::move(inputs), mode);
}


}  // namespace gelu_ext
