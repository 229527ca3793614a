// Autograd for both ops, registered in C++ under the Autograd dispatch key.
//
// Why C++ and not torch.library.register_autograd in Python: on small tensors the Python round trip of a
// Python-registered backward costs as much as the kernels (measured on 2^12 float32 elements on the CPU,
// forward+backward: 34 us with the Python registration, 24 us with this one, F.gelu 31 us).
//
// gelu' is the gelu_backward op (a kernel). gelu_backward is differentiable too: its derivative in x needs
// gelu'', written here with ATen ops so that every further order is differentiable as well.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "gelu_op_common.h"

namespace gelu_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_gelu(const at::Tensor& x, c10::string_view approximate) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("gelu_ext::gelu", "")
                             .typed<at::Tensor(const at::Tensor&, c10::string_view)>();
  return op.call(x, approximate);
}

at::Tensor call_gelu_backward(const at::Tensor& grad, const at::Tensor& x, c10::string_view approximate) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("gelu_ext::gelu_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(grad, x, approximate);
}

// d^2 gelu / dx^2 in differentiable ATen ops (matches gelu_ext/reference.py's gelu_second_derivative).
at::Tensor gelu_second_derivative(const at::Tensor& x, c10::string_view approximate) {
  const at::Tensor xc = x.clamp(-math::kClamp, math::kClamp);  // |x| beyond this: the limits, no inf * 0
  if (parse_approximate(approximate, "gelu_ext.gelu_backward") == Approximate::kTanh) {
    const at::Tensor s = xc * (math::kTanhC1 + math::kTanhC2 * xc * xc);
    const at::Tensor sig = at::sigmoid(s);
    const at::Tensor ds = math::kTanhC1 + 3.0 * math::kTanhC2 * xc * xc;
    const at::Tensor sig_prime = sig * at::sigmoid(-s);  // sigmoid(s) (1 - sigmoid(s))
    return sig_prime * (2.0 * ds + xc * ((1.0 - 2.0 * sig) * ds * ds + 6.0 * math::kTanhC2 * xc));
  }
  return math::kInvSqrt2Pi * at::exp(-0.5 * xc * xc) * (2.0 - xc * xc);
}

class GeluBackwardFunction : public torch::autograd::Function<GeluBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& x,
                            c10::string_view approximate) {
    ctx->save_for_backward({grad, x});
    ctx->saved_data["approximate"] = std::string(approximate);
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_gelu_backward(grad, x, approximate);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const std::string approximate = ctx->saved_data["approximate"].toStringRef();
    const at::Tensor& gg = grad_outputs[0];
    at::Tensor grad_grad, grad_x;
    if (ctx->needs_input_grad(0)) grad_grad = GeluBackwardFunction::apply(gg, saved[1], approximate);
    if (ctx->needs_input_grad(1)) grad_x = gg * saved[0] * gelu_second_derivative(saved[1], approximate);
    return {grad_grad, grad_x, at::Tensor()};
  }
};

class GeluFunction : public torch::autograd::Function<GeluFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, c10::string_view approximate) {
    ctx->save_for_backward({x});
    ctx->saved_data["approximate"] = std::string(approximate);
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_gelu(x, approximate);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const std::string approximate = ctx->saved_data["approximate"].toStringRef();
    return {GeluBackwardFunction::apply(grad_outputs[0], x, approximate), at::Tensor()};
  }
};

at::Tensor gelu_autograd(const at::Tensor& x, c10::string_view approximate) {
  return GeluFunction::apply(x, approximate);
}

at::Tensor gelu_backward_autograd(const at::Tensor& grad, const at::Tensor& x, c10::string_view approximate) {
  return GeluBackwardFunction::apply(grad, x, approximate);
}

}  // namespace
}  // namespace gelu_ext

TORCH_LIBRARY_IMPL(gelu_ext, Autograd, m) {
  m.impl("gelu", &gelu_ext::gelu_autograd);
  m.impl("gelu_backward", &gelu_ext::gelu_backward_autograd);
}
