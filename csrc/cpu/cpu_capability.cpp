// Which of the CPU loop's compiled variants runs (csrc/cpu/elementwise_cpu.h): the best the CPU supports, or the one
// GELU_EXT_CPU_CAPABILITY names (like ATEN_CPU_CAPABILITY), or one set from Python (gelu_ext._C).
#include <cstdlib>
#include <string>

#include "elementwise_cpu.h"

namespace gelu_ext {
namespace cpu {
namespace {

CpuCapability best_supported() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
    return __builtin_cpu_supports("avx512bf16") ? CpuCapability::kAvx512Bf16 : CpuCapability::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuCapability::kAvx2;
#endif
  return CpuCapability::kBaseline;
}

CpuCapability parse_capability(const std::string& name) {
  const CpuCapability best = best_supported();
  CpuCapability wanted = CpuCapability::kBaseline;
  if (name == "baseline" || name == "default") {
    wanted = CpuCapability::kBaseline;
  } else if (name == "avx2") {
    wanted = CpuCapability::kAvx2;
  } else if (name == "avx512") {
    wanted = CpuCapability::kAvx512;
  } else if (name == "avx512_bf16") {
    wanted = CpuCapability::kAvx512Bf16;
  } else {
    check(false, "gelu_ext: unknown CPU capability \"", name, "\"; use avx512_bf16, avx512, avx2 or baseline");
  }
  check(static_cast<int>(wanted) <= static_cast<int>(best), "gelu_ext: this CPU does not support ", name);
  return wanted;
}

CpuCapability& selected() {
  static CpuCapability value = [] {
    const char* env = std::getenv("GELU_EXT_CPU_CAPABILITY");
    return env != nullptr && *env != '\0' ? parse_capability(env) : best_supported();
  }();
  return value;
}

}  // namespace

CpuCapability capability() { return selected(); }

}  // namespace cpu

// For gelu_ext._C (csrc/python_module.cpp).
std::string cpu_capability() {
  switch (cpu::capability()) {
    case cpu::CpuCapability::kAvx512Bf16:
      return "avx512_bf16";
    case cpu::CpuCapability::kAvx512:
      return "avx512";
    case cpu::CpuCapability::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

void set_cpu_capability(const std::string& name) { cpu::selected() = cpu::parse_capability(name); }

}  // namespace gelu_ext
