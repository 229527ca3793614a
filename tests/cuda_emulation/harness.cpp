// The test-only library around the emulated kernels (tests/test_cuda_emulation.py loads it with ctypes; it is never
// part of the wheel). Compiled, like the kernels files, with emulation.h force-included. It provides:
//   * the emulation's runtime: the grid loop, and the three CUDA runtime calls the kernels make;
//   * the six launchers of csrc/cuda/kernels.h behind a C ABI (raw pointers from torch tensors' data_ptr());
//   * a raw launch of a kernel with any configuration, for the driver's limits;
//   * probe runs: the same launch machinery (elementwise_cuda.cuh) instantiated over a storage type whose copies touch
//     no memory but report their addresses. They count the reads and writes of every element (each output written
//     exactly once: the host equivalent of racecheck), and run sizes above 2^31 elements, of which only a few blocks
//     are executed, over address space that is reserved but never mapped.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "cuda/elementwise_cuda.cuh"
#include "cuda/kernels.h"
#include "cuda/launch.cuh"

namespace gelu_ext::emulation {

void run_grid(dim3 grid, dim3 block, const std::function<void()>& body) {
  Settings& s = settings();
  // The blocks to run, per dimension: all of them, or the first, middle and last.
  auto indices = [&](unsigned n) {
    std::vector<unsigned> picked;
    if (s.sample_blocks) {
      picked = {0, n / 2, n - 1};
      picked.erase(std::unique(picked.begin(), picked.end()), picked.end());
    } else {
      for (unsigned i = 0; i < n; ++i) picked.push_back(i);
    }
    return picked;
  };
  const std::vector<unsigned> xs = indices(grid.x), ys = indices(grid.y), zs = indices(grid.z);
  const uint64_t blocks = uint64_t{xs.size()} * ys.size() * zs.size();
  auto run_block = [&](uint64_t linear) {
    const uint3 b{xs[linear % xs.size()], ys[linear / xs.size() % ys.size()], zs[linear / xs.size() / ys.size()]};
    current.block_idx = b;
    current.block_dim = block;
    current.grid_dim = grid;
    for (unsigned z = 0; z < block.z; ++z) {
      for (unsigned y = 0; y < block.y; ++y) {
        for (unsigned x = 0; x < block.x; ++x) {
          current.thread_idx = uint3{x, y, z};
          body();
        }
      }
    }
  };
  const int workers = static_cast<int>(std::min<uint64_t>(std::max(s.host_threads, 1), blocks));
  if (workers <= 1) {
    for (uint64_t b = 0; b < blocks; ++b) run_block(b);
    return;
  }
  // Blocks are handed out one at a time, so that their order over the host threads varies from run to run.
  std::atomic<uint64_t> next{0};
  std::exception_ptr failure;
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      try {
        for (uint64_t b; !failed.load() && (b = next.fetch_add(1)) < blocks;) run_block(b);
      } catch (...) {
        if (!failed.exchange(true)) failure = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace gelu_ext::emulation

// ---- The CUDA runtime calls the kernels make --------------------------------------------------------------------
// Anything else the kernels files call stays undefined, and the library fails to link (-Wl,--no-undefined). Hidden
// (-fvisibility=hidden), so that a CUDA build of torch, whose libcudart is loaded in the same process, does not
// supply them instead.
extern "C" {
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;  // not emulated: say so
  *value = gelu_ext::emulation::settings().sm_count;
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = gelu_ext::emulation::last_error;
  gelu_ext::emulation::last_error = cudaSuccess;
  return e;
}
}

namespace {

using gelu_ext::Approximate;
using gelu_ext::cuda::DType;
using gelu_ext::cuda::RowsInput;
namespace emu = gelu_ext::emulation;
namespace detail = gelu_ext::cuda::detail;

thread_local std::string last_message;

// Runs fn, turning a C++ exception (a probe's report) into an error code and a message for the tests.
template <typename Fn>
int guarded(Fn&& fn) {
  last_message.clear();
  try {
    return static_cast<int>(fn());
  } catch (const std::exception& e) {
    last_message = e.what();
    return -1;
  }
}

// ---- Probes -------------------------------------------------------------------------------------------------------

// An operand of a probe run: elements [0, extent) of kBytes each from `begin`, with reserved, unmapped address space
// around it, so that an access just outside is seen as such.
struct Region {
  uintptr_t begin = 0;
  int64_t extent = 0;
  uint32_t* counts = nullptr;  // per element; null when only the written indices are kept
  bool is_output = false;
};

struct ProbeState {
  Region regions[5];
  int n_regions = 0;
  uintptr_t reserved_begin = 0;
  uintptr_t reserved_end = 0;
  int element_bytes = 1;
  int64_t* written = nullptr;  // (output << 48) | index, for the sampled runs
  int64_t written_capacity = 0;
  int64_t written_count = 0;
};

ProbeState* probe = nullptr;

[[noreturn]] void probe_fail(const std::string& what) { throw std::runtime_error(what); }

void probe_access(const void* address, bool is_write) {
  const auto a = reinterpret_cast<uintptr_t>(address);
  if (a < probe->reserved_begin || a >= probe->reserved_end) return;  // a local copy (registers, the stack)
  for (int r = 0; r < probe->n_regions; ++r) {
    Region& region = probe->regions[r];
    const uintptr_t end = region.begin + static_cast<uintptr_t>(region.extent) * probe->element_bytes;
    if (a < region.begin || a >= end) continue;
    const int64_t offset = static_cast<int64_t>(a - region.begin);
    if (offset % probe->element_bytes != 0) probe_fail("misaligned element access in operand " + std::to_string(r));
    const int64_t index = offset / probe->element_bytes;
    if (is_write && !region.is_output) probe_fail("write to input operand " + std::to_string(r));
    if (!is_write && region.is_output) return;  // outputs are never read back; a read would be harmless anyway
    if (region.counts != nullptr) {
      __atomic_fetch_add(&region.counts[index], 1u, __ATOMIC_RELAXED);
    } else if (is_write) {
      if (probe->written_count >= probe->written_capacity) probe_fail("more writes than the sampled blocks own");
      probe->written[probe->written_count++] = (static_cast<int64_t>(r) << 48) | index;
    }
    return;
  }
  const std::string kind = is_write ? "write" : "read";
  probe_fail(kind + " outside every operand, " + std::to_string(static_cast<int64_t>(a - probe->reserved_begin)) +
             " bytes into the reserved space");
}

// The storage type of the probe runs: kBytes wide, so the launchers pick the vector width of a real type of that
// size (8 elements per 16-byte vector for 2 bytes, as float16), but a copy reports its source and destination
// addresses and reads and writes nothing. Its value, to the functor, is always 1.
template <int kBytes>
struct Probe {
  unsigned char unused[kBytes];
  Probe() = default;
  Probe(float) {}  // from_compute's result: a value being stored
  Probe(const Probe& source) { probe_access(&source, false); }
  Probe& operator=(const Probe& source) {
    probe_access(&source, false);
    probe_access(this, true);
    return *this;
  }
};

template <int kBytes>
float to_compute(Probe<kBytes>) {  // found by argument-dependent lookup from elementwise_cuda.cuh's apply_op
  return 1.0f;
}

constexpr Approximate kNone = Approximate::kNone;

// Runs one of the six launchers' machinery over Probe<kBytes>, as the launcher for that op calls it.
template <int kBytes>
cudaError_t run_probe_launcher(int launcher, const void* const* in, const int64_t* row_stride, void* const* out,
                               void* partial, int64_t rows, int64_t cols) {
  using P = Probe<kBytes>;
  switch (launcher) {
    case 0:
      return detail::launch_flat<gelu_ext::GeluForward<kNone>, P, 1>(in[0], nullptr, out[0], cols, nullptr);
    case 1:
      return detail::launch_flat<gelu_ext::GeluBackward<kNone>, P, 2>(in[0], in[1], out[0], cols, nullptr);
    case 2: {
      const RowsInput inputs[2] = {{in[0], row_stride[0]}, {in[1], row_stride[1]}};
      return detail::launch_rows<gelu_ext::BiasGeluForward<kNone>, P>(inputs, out[0], nullptr, nullptr, nullptr, rows,
                                                                     cols, nullptr);
    }
    case 3: {
      const RowsInput inputs[3] = {{in[0], row_stride[0]}, {in[1], row_stride[1]}, {in[2], row_stride[2]}};
      return detail::launch_rows<gelu_ext::BiasGeluBackward<kNone>, P, true>(inputs, out[0], nullptr, partial, out[1],
                                                                            rows, cols, nullptr);
    }
    case 4: {
      const RowsInput inputs[2] = {{in[0], row_stride[0]}, {in[1], row_stride[1]}};
      return detail::launch_rows<gelu_ext::GegluForward<kNone>, P>(inputs, out[0], nullptr, nullptr, nullptr, rows,
                                                                  cols, nullptr);
    }
    case 5: {
      const RowsInput inputs[3] = {{in[0], row_stride[0]}, {in[1], row_stride[1]}, {in[2], row_stride[2]}};
      return detail::launch_rows<gelu_ext::GegluBackward<kNone>, P>(inputs, out[0], out[1], nullptr, nullptr, rows,
                                                                   cols, nullptr);
    }
  }
  probe_fail("unknown launcher " + std::to_string(launcher));
}

constexpr uintptr_t kGuardBytes = uintptr_t{1} << 20;  // unmapped space between operands
constexpr int64_t kInputs[6] = {1, 2, 2, 3, 2, 3};
constexpr int64_t kOutputs[6] = {1, 1, 1, 2, 1, 2};

}  // namespace

#define EMU_EXPORT __attribute__((visibility("default")))

extern "C" {

// ---- Settings and the launch log --------------------------------------------------------------------------------

EMU_EXPORT void emu_configure(int sm_count, int host_threads) {
  emu::settings().sm_count = sm_count;
  emu::settings().host_threads = host_threads;
}

EMU_EXPORT void emu_clear_log() { emu::settings().log.clear(); }
EMU_EXPORT int64_t emu_log_size() { return static_cast<int64_t>(emu::settings().log.size()); }

// grid.x, grid.y, grid.z, block.x, block.y, block.z, status of launch i.
EMU_EXPORT void emu_log_entry(int64_t i, int64_t* out) {
  const emu::LaunchRecord& r = emu::settings().log.at(static_cast<size_t>(i));
  const int64_t values[7] = {r.grid.x, r.grid.y, r.grid.z, r.block.x, r.block.y, r.block.z, r.status};
  std::copy(values, values + 7, out);
}

EMU_EXPORT int emu_error_invalid_configuration() { return cudaErrorInvalidConfiguration; }
EMU_EXPORT int emu_error_misaligned_address() { return cudaErrorMisalignedAddress; }
EMU_EXPORT const char* emu_last_message() { return last_message.c_str(); }

// ---- The six launchers --------------------------------------------------------------------------------------------

EMU_EXPORT int emu_gelu_forward(const void* x, void* y, int64_t n, int dtype, int mode) {
  return guarded([&] {
    return gelu_ext::cuda::launch_gelu_forward(x, y, n, DType(dtype), Approximate(mode), nullptr);
  });
}

EMU_EXPORT int emu_gelu_backward(const void* grad, const void* x, void* y, int64_t n, int dtype, int mode) {
  return guarded([&] {
    return gelu_ext::cuda::launch_gelu_backward(grad, x, y, n, DType(dtype), Approximate(mode), nullptr);
  });
}

EMU_EXPORT int emu_bias_gelu_forward(const void* x, int64_t x_stride, const void* bias, int64_t bias_stride, void* y,
                                     int64_t rows, int64_t cols, int dtype, int mode) {
  return guarded([&] {
    return gelu_ext::cuda::launch_bias_gelu_forward({x, x_stride}, {bias, bias_stride}, y, rows, cols, DType(dtype),
                                                    Approximate(mode), nullptr);
  });
}

EMU_EXPORT int emu_bias_gelu_backward(const void* grad, int64_t grad_stride, const void* x, int64_t x_stride,
                                      const void* bias, int64_t bias_stride, void* grad_x, void* grad_bias,
                                      void* partial, int64_t rows, int64_t cols, int dtype, int mode) {
  return guarded([&] {
    return gelu_ext::cuda::launch_bias_gelu_backward({grad, grad_stride}, {x, x_stride}, {bias, bias_stride}, grad_x,
                                                     grad_bias, partial, rows, cols, DType(dtype), Approximate(mode),
                                                     nullptr);
  });
}

EMU_EXPORT int emu_geglu_forward(const void* gate, int64_t gate_stride, const void* up, int64_t up_stride, void* y,
                                 int64_t rows, int64_t cols, int dtype, int mode) {
  return guarded([&] {
    return gelu_ext::cuda::launch_geglu_forward({gate, gate_stride}, {up, up_stride}, y, rows, cols, DType(dtype),
                                                Approximate(mode), nullptr);
  });
}

EMU_EXPORT int emu_geglu_backward(const void* grad, int64_t grad_stride, const void* gate, int64_t gate_stride,
                                  const void* up, int64_t up_stride, void* grad_gate, void* grad_up, int64_t rows,
                                  int64_t cols, int dtype, int mode) {
  return guarded([&] {
    return gelu_ext::cuda::launch_geglu_backward({grad, grad_stride}, {gate, gate_stride}, {up, up_stride}, grad_gate,
                                                 grad_up, rows, cols, DType(dtype), Approximate(mode), nullptr);
  });
}

// A 16-byte vector load through the kernels' own Vector type, for the sanitizer build's self-test: at a misaligned
// address, -fsanitize=alignment must report it (a GPU faults: "misaligned address").
EMU_EXPORT float emu_vector_load(const void* p) {
  const auto v = *static_cast<const detail::Vector<float>*>(p);
  return v.values[0] + v.values[3];
}

EMU_EXPORT int64_t emu_column_sum_buffer_rows(int64_t rows) { return gelu_ext::cuda::column_sum_buffer_rows(rows); }

// ---- A raw launch: the driver's limits ----------------------------------------------------------------------------

namespace {
std::atomic<int64_t> threads_run{0};
std::atomic<int64_t> index_checksum{0};

// Adds a number unique to each (block, thread) of the grid, so that a test sees every one ran exactly once.
__global__ void count_threads() {
  const int64_t block = (int64_t{blockIdx.z} * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = (int64_t{threadIdx.z} * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int64_t threads_per_block = int64_t{blockDim.x} * blockDim.y * blockDim.z;
  threads_run.fetch_add(1);
  index_checksum.fetch_add(block * threads_per_block + thread);
}
}  // namespace

// Launches count_threads<<<grid, block>>> through launch_kernel; returns cudaGetLastError() and, in out[0..1], how many
// threads ran and the sum of their linear indices.
// With `sampled`, only the first, middle and last blocks of each grid dimension run (a grid of 2^31 - 1 blocks).
EMU_EXPORT int emu_raw_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                              int64_t* out, int sampled) {
  threads_run = 0;
  index_checksum = 0;
  emu::settings().sample_blocks = sampled != 0;
  detail::launch_kernel(count_threads, dim3(gx, gy, gz), dim3(bx, by, bz), nullptr);
  emu::settings().sample_blocks = false;
  out[0] = threads_run;
  out[1] = index_checksum;
  return cudaGetLastError();
}

// ---- A misaligned vector access: the GPU's fault, not the host's -------------------------------------------------

namespace {
// One 16-byte vector load (or store) through the kernels' own load_vector / store_vector, `offset` bytes into an
// aligned buffer: a GPU faults unless offset is a multiple of 16.
__global__ void access_one_vector(float* base, int64_t offset, int store) {
  using Vec = detail::Vector<float>;
  auto* p = reinterpret_cast<float*>(reinterpret_cast<char*>(base) + offset);
  if (store != 0) {
    detail::store_vector(p, Vec{});
  } else {
    base[0] = detail::load_vector<Vec>(p).values[0];
  }
}
}  // namespace

// Launches access_one_vector on one thread through launch_kernel; returns cudaGetLastError().
EMU_EXPORT int emu_vector_access_launch(int64_t offset, int store) {
  alignas(64) static float buffer[16];
  detail::launch_kernel(access_one_vector, dim3(1), dim3(1), nullptr, buffer, offset, store);
  return cudaGetLastError();
}

// ---- Probe runs ---------------------------------------------------------------------------------------------------

// Runs `launcher` (0..5, as kernels.h lists them) over Probe<element_bytes> operands: inputs then outputs, each with
// `extents[k]` elements starting `offsets[k]` bytes past a 4 KiB boundary of reserved address space, inputs with
// row strides `row_strides` (the rows launchers; the flat ones take cols as n). With counts[k] non-null, every
// access to an element of operand k is counted there; with `written`, the writes are listed instead (at most
// `capacity`), and `sampled_blocks` (0 = all) restricts every launch to the blocks whose x and y indices are each the
// first, middle or last of their grid dimension. Returns the launch status, or -1 with emu_last_message().
EMU_EXPORT int emu_probe_run(int launcher, int element_bytes, int64_t rows, int64_t cols, const int64_t* row_strides,
                             const int64_t* extents, const int64_t* offsets, uint32_t** counts, int64_t* written,
                             int64_t capacity, int64_t* written_count, int sampled_blocks) {
  return guarded([&]() -> int {
    if (launcher < 0 || launcher > 5) probe_fail("unknown launcher " + std::to_string(launcher));
    const int n = static_cast<int>(kInputs[launcher] + kOutputs[launcher]);
    ProbeState state;
    state.element_bytes = element_bytes;
    state.n_regions = n;
    uintptr_t size = kGuardBytes;
    for (int k = 0; k < n; ++k) {
      size += (static_cast<uintptr_t>(extents[k]) * element_bytes + 4096 + kGuardBytes + 4095) & ~uintptr_t{4095};
    }
    // Reserved, never mapped: a real load or store anywhere in it would fault.
    void* reserved = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserved == MAP_FAILED) probe_fail("could not reserve " + std::to_string(size) + " bytes of address space");
    state.reserved_begin = reinterpret_cast<uintptr_t>(reserved);
    state.reserved_end = state.reserved_begin + size;
    uintptr_t at = state.reserved_begin + kGuardBytes;
    void* pointers[5];
    for (int k = 0; k < n; ++k) {
      state.regions[k] = {at + static_cast<uintptr_t>(offsets[k]), extents[k], counts[k], k >= kInputs[launcher]};
      pointers[k] = reinterpret_cast<void*>(state.regions[k].begin);
      at += (static_cast<uintptr_t>(extents[k]) * element_bytes + 4096 + kGuardBytes + 4095) & ~uintptr_t{4095};
    }
    state.written = written;
    state.written_capacity = capacity;
    // bias_gelu_backward's partial sums are real memory of the compute type (float).
    std::vector<float> partial(
        launcher == 3 ? static_cast<size_t>(gelu_ext::cuda::column_sum_buffer_rows(rows) * cols) : 0);
    emu::Settings& s = emu::settings();
    const int host_threads = s.host_threads;
    if (written != nullptr) s.host_threads = 1;  // the list of writes is not shared between threads
    s.sample_blocks = sampled_blocks != 0;
    probe = &state;
    cudaError_t status = cudaSuccess;
    std::exception_ptr failure;
    try {
      const void* in[3] = {pointers[0], kInputs[launcher] > 1 ? pointers[1] : nullptr,
                           kInputs[launcher] > 2 ? pointers[2] : nullptr};
      void* out[2] = {pointers[kInputs[launcher]], kOutputs[launcher] > 1 ? pointers[kInputs[launcher] + 1] : nullptr};
      switch (element_bytes) {
        case 2:
          status = run_probe_launcher<2>(launcher, in, row_strides, out, partial.data(), rows, cols);
          break;
        case 4:
          status = run_probe_launcher<4>(launcher, in, row_strides, out, partial.data(), rows, cols);
          break;
        case 8:
          status = run_probe_launcher<8>(launcher, in, row_strides, out, partial.data(), rows, cols);
          break;
        default:
          probe_fail("element_bytes must be 2, 4 or 8");
      }
    } catch (...) {
      failure = std::current_exception();
    }
    probe = nullptr;
    s.sample_blocks = false;
    s.host_threads = host_threads;
    *written_count = state.written_count;
    munmap(reserved, size);
    if (failure) std::rethrow_exception(failure);
    return status;
  });
}

}  // extern "C"
