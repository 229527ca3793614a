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

inline void check_same(const Tensor& grad_output, const Tensor& x, const char* op) {
  const auto grad_sizes = grad_output.sizes();
  const auto x_sizes = x.sizes();
  check(std::equal(grad_sizes.begin(), grad_sizes.end(), x_sizes.begin(), x_sizes.end()), op,
              ": grad_output has shape ", shape_string(grad_sizes), " but x has shape ", shape_string(x_sizes));
  check(grad_output.scalar_type() == x.scalar_type(), op, ": grad_output has dtype ",
              grad_output.scalar_type(), " but x has dtype ", x.scalar_type());
  check(grad_output.device() == x.device(), op, ": grad_output is on ",
                device_string(grad_output.device()), " but x is on ", device_string(x.device()));
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
inline Tensor empty_output_like(const Tensor& x) {
  const auto sizes = x.sizes();
  const std::vector<int64_t> strides =
      x.numel() == 0 || x.is_contiguous() ? contiguous_strides(sizes) : dense_strides_like(sizes, x.strides());
  int32_t dtype = 0, device_type = 0, device_index = 0;
  AtenTensorHandle out = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(x.get(), &dtype));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(x.get(), &device_type));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(x.get(), &device_index));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(static_cast<int64_t>(sizes.size()), sizes.data(),
                                                         strides.data(), dtype, device_type, device_index, &out));
  return Tensor(out);
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
  check_input(grad, kOp, "grad_output");
  check_input(x, kOp, "x");
  check_same(grad, x, kOp);
  const Approximate mode = parse_approximate(approximate, kOp);
  Tensor out = empty_output_like(x);
  Tensor x_laid_out = with_layout_of(x, out);
  Tensor grad_laid_out = with_layout_of(grad, out);
  return {std::move(out), std::move(x_laid_out), std::move(grad_laid_out), mode};
}

}  // namespace gelu_ext
