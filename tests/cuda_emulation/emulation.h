// A host emulation of the CUDA launch grid, so that csrc/cuda/*_kernels.cu run on the CPU, unchanged, for the tests
// (tests/test_cuda_emulation.py). Force-included (g++ -x c++ -include emulation.h) in front of each kernels file;
// the CUDA toolkit's own host headers supply dim3, cudaError_t and the half types' host conversions.
//
// What it emulates: csrc/cuda/launch.cuh's launch_kernel runs every block of the grid (or, for the tests of virtual
// sizes, a chosen subset), every thread of a block in turn, with threadIdx / blockIdx / blockDim / gridDim set; the
// launch configuration is checked first, as the driver does, and an invalid one runs nothing and sets the error
// cudaGetLastError returns (cudaErrorInvalidConfiguration). Blocks may be spread over several host threads.
// A vector access (load_vector / store_vector in csrc/cuda/elementwise_cuda.cuh) at an address that is not a multiple
// of its size ends the grid, as a GPU's fault does, and sets cudaErrorMisalignedAddress: the host would otherwise
// crash the test process (aligned SSE moves) or, worse, succeed where a GPU cannot.
//
// Running the threads of a block one after another is faithful only for kernels whose threads never wait for or
// talk to each other. So everything that would make them (barriers, shared memory, warp-level operations, atomics)
// is defined below as a name that does not compile: a kernel that starts using one fails this build with an error
// that names the construct, instead of running wrong.
#pragma once

#define GELU_EXT_CUDA_EMULATION 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <vector>

// CUDA's host_defines.h already makes __global__, __device__, __host__ empty and __forceinline__ always_inline for a
// host compiler; __launch_bounds__ it leaves to nvcc.
#define __launch_bounds__(...)

namespace gelu_ext::emulation {

// The built-in index variables of the thread being run, per host thread (blocks may run on several).
struct ThreadContext {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
inline thread_local ThreadContext current;

// One launch as the emulation saw it (the tests read the log: a clamped grid, a grid-stride wrap).
struct LaunchRecord {
  dim3 grid;
  dim3 block;
  cudaError_t status;
};

struct Settings {
  int sm_count = 132;    // cudaDevAttrMultiProcessorCount: small values make the launchers' grids wrap
  int host_threads = 1;  // blocks spread over this many host threads
  // When set, only the first, middle and last blocks of each grid dimension run: the tests of sizes above 2^31
  // elements run a few blocks of a grid that covers the whole (virtual) size.
  bool sample_blocks = false;
  std::vector<LaunchRecord> log;
};

inline Settings& settings() {
  static Settings s;
  return s;
}

// cudaGetLastError's state: per host thread, as in the CUDA runtime.
inline thread_local cudaError_t last_error = cudaSuccess;

// The driver's limits for a launch (every GPU from compute capability 3.0 on).
inline cudaError_t check_configuration(dim3 grid, dim3 block) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const bool block_ok = threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024 && block.z <= 64;
  const bool grid_ok = grid.x >= 1 && grid.x <= 2147483647u && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 &&
                       grid.z <= 65535;
  return block_ok && grid_ok ? cudaSuccess : cudaErrorInvalidConfiguration;
}

// Thrown by a misaligned vector access: it unwinds the kernel and the grid, and launch() turns it into the error.
struct MisalignedAddress {};

inline void check_vector_access(const void* pointer, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(pointer) % bytes != 0) throw MisalignedAddress{};
}

// Runs body once per thread of the grid (the accepted blocks only), with the context set.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& body);

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t /*stream: one queue, run now*/,
            const Args&... args) {
  const cudaError_t status = check_configuration(grid, block);
  settings().log.push_back({grid, block, status});
  if (status != cudaSuccess) {
    last_error = status;
    return;
  }
  try {
    // Each thread gets its own copy of the arguments, as kernel parameters are.
    run_grid(grid, block, [&] { kernel(args...); });
  } catch (const MisalignedAddress&) {
    settings().log.back().status = cudaErrorMisalignedAddress;
    last_error = cudaErrorMisalignedAddress;
  }
}

}  // namespace gelu_ext::emulation

// load_vector / store_vector (csrc/cuda/elementwise_cuda.cuh) check their address here.
#define GELU_EXT_CHECK_VECTOR_ACCESS(pointer, bytes) ::gelu_ext::emulation::check_vector_access(pointer, bytes)

// The built-in index variables.
#define threadIdx (static_cast<const uint3&>(::gelu_ext::emulation::current.thread_idx))
#define blockIdx (static_cast<const uint3&>(::gelu_ext::emulation::current.block_idx))
#define blockDim (static_cast<const dim3&>(::gelu_ext::emulation::current.block_dim))
#define gridDim (static_cast<const dim3&>(::gelu_ext::emulation::current.grid_dim))

// CUDA's device min for the 64-bit indices (the kernels call it unqualified, as device code does).
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }

// ---- What the emulation cannot run faithfully: each becomes a name that does not compile ---------------------------
// (threads run one after another, so a barrier would deadlock or pass vacuously, shared memory and warp operations
// would see other threads' values at the wrong time, and atomics would hide the races they exist to resolve).
#define __shared__ gelu_ext_emulation_cannot_run_shared_memory
#define __constant__ gelu_ext_emulation_cannot_run_constant_memory
#define __syncthreads gelu_ext_emulation_cannot_run_barrier___syncthreads
#define __syncthreads_count gelu_ext_emulation_cannot_run_barrier___syncthreads_count
#define __syncthreads_and gelu_ext_emulation_cannot_run_barrier___syncthreads_and
#define __syncthreads_or gelu_ext_emulation_cannot_run_barrier___syncthreads_or
#define __syncwarp gelu_ext_emulation_cannot_run_barrier___syncwarp
#define __threadfence gelu_ext_emulation_cannot_run_fence___threadfence
#define __threadfence_block gelu_ext_emulation_cannot_run_fence___threadfence_block
#define __threadfence_system gelu_ext_emulation_cannot_run_fence___threadfence_system
#define warpSize gelu_ext_emulation_cannot_run_warp_operation_warpSize
#define __activemask gelu_ext_emulation_cannot_run_warp_operation___activemask
#define __shfl_sync gelu_ext_emulation_cannot_run_warp_shuffle___shfl_sync
#define __shfl_up_sync gelu_ext_emulation_cannot_run_warp_shuffle___shfl_up_sync
#define __shfl_down_sync gelu_ext_emulation_cannot_run_warp_shuffle___shfl_down_sync
#define __shfl_xor_sync gelu_ext_emulation_cannot_run_warp_shuffle___shfl_xor_sync
#define __ballot_sync gelu_ext_emulation_cannot_run_warp_vote___ballot_sync
#define __any_sync gelu_ext_emulation_cannot_run_warp_vote___any_sync
#define __all_sync gelu_ext_emulation_cannot_run_warp_vote___all_sync
#define __uni_sync gelu_ext_emulation_cannot_run_warp_vote___uni_sync
#define __match_any_sync gelu_ext_emulation_cannot_run_warp_match___match_any_sync
#define __match_all_sync gelu_ext_emulation_cannot_run_warp_match___match_all_sync
#define __reduce_add_sync gelu_ext_emulation_cannot_run_warp_reduce___reduce_add_sync
#define __reduce_min_sync gelu_ext_emulation_cannot_run_warp_reduce___reduce_min_sync
#define __reduce_max_sync gelu_ext_emulation_cannot_run_warp_reduce___reduce_max_sync
#define __reduce_and_sync gelu_ext_emulation_cannot_run_warp_reduce___reduce_and_sync
#define __reduce_or_sync gelu_ext_emulation_cannot_run_warp_reduce___reduce_or_sync
#define __reduce_xor_sync gelu_ext_emulation_cannot_run_warp_reduce___reduce_xor_sync
#define atomicAdd gelu_ext_emulation_cannot_run_atomic_atomicAdd
#define atomicSub gelu_ext_emulation_cannot_run_atomic_atomicSub
#define atomicExch gelu_ext_emulation_cannot_run_atomic_atomicExch
#define atomicMin gelu_ext_emulation_cannot_run_atomic_atomicMin
#define atomicMax gelu_ext_emulation_cannot_run_atomic_atomicMax
#define atomicInc gelu_ext_emulation_cannot_run_atomic_atomicInc
#define atomicDec gelu_ext_emulation_cannot_run_atomic_atomicDec
#define atomicCAS gelu_ext_emulation_cannot_run_atomic_atomicCAS
#define atomicAnd gelu_ext_emulation_cannot_run_atomic_atomicAnd
#define atomicOr gelu_ext_emulation_cannot_run_atomic_atomicOr
#define atomicXor gelu_ext_emulation_cannot_run_atomic_atomicXor
#define atomicAdd_block gelu_ext_emulation_cannot_run_atomic_atomicAdd_block
#define atomicAdd_system gelu_ext_emulation_cannot_run_atomic_atomicAdd_system
#define cooperative_groups gelu_ext_emulation_cannot_run_cooperative_groups
