"""The CUDA kernels, run without a GPU: csrc/cuda/*_kernels.cu compiled as C++ against a host emulation of the launch
grid (tests/cuda_emulation/), checked bit for bit against gelu_ext's CPU kernels.

What this covers: the index arithmetic, the vectorized/scalar split and the tails, pointer offsets, row strides, the
launch geometry (grid-stride wraps, rows_geometry's clamps, the driver's limits), the column sums, 64-bit indices,
out-of-bounds and misaligned accesses (sanitizer build) and writes of one element by two threads (write counts).
What it cannot: nvcc's code generation, the *_cuda.cpp registrations, device guard and streams, and speed
(tests/test_gelu_cuda.py and benchmarks/run_gpu.sh, on a GPU).
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gelu_ext
from gelu_ext.reference import gelu_derivative_terms
from gelu_ext.testing import APPROXIMATE_MODES, DTYPES, assert_bitwise_equal, bias_gelu_sum, column_sum_error_bound

sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_emulation"))

import emulation_build

ROOT = Path(__file__).resolve().parents[1]
# "plain", or "asan" in the child process of test_sanitizers_find_nothing (AddressSanitizer + UBSan preloaded).
VARIANT = os.environ.get("GELU_EXT_EMULATION_VARIANT", "plain")
SANITIZED = VARIANT == "asan"

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}  # kernels.h's DType
MODE_CODES = {"none": 0, "tanh": 1}
THREADS = 256  # elementwise_cuda.cuh's kThreads
VECTORS_PER_THREAD = 4  # and kVectorsPerThread
SMALL_SM_COUNT = 1  # 8 resident blocks of 256 threads: the launchers' grids wrap from 2,048 scalar elements on
LAUNCHERS = [
    "gelu_forward",
    "gelu_backward",
    "bias_gelu_forward",
    "bias_gelu_backward",
    "geglu_forward",
    "geglu_backward",
]

_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "emu_configure": (None, [_INT, _INT]),
    "emu_clear_log": (None, []),
    "emu_log_size": (_I64, []),
    "emu_log_entry": (None, [_I64, _PTR]),
    "emu_error_invalid_configuration": (_INT, []),
    "emu_error_misaligned_address": (_INT, []),
    "emu_last_message": (ctypes.c_char_p, []),
    "emu_gelu_forward": (_INT, [_PTR, _PTR, _I64, _INT, _INT]),
    "emu_gelu_backward": (_INT, [_PTR, _PTR, _PTR, _I64, _INT, _INT]),
    "emu_bias_gelu_forward": (_INT, [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _INT, _INT]),
    "emu_bias_gelu_backward": (_INT, [_PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _PTR, _I64, _I64, _INT, _INT]),
    "emu_geglu_forward": (_INT, [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _INT, _INT]),
    "emu_geglu_backward": (_INT, [_PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _I64, _I64, _INT, _INT]),
    "emu_column_sum_buffer_rows": (_I64, [_I64]),
    "emu_raw_launch": (_INT, [ctypes.c_uint] * 6 + [_PTR, _INT]),
    "emu_probe_run": (_INT, [_INT, _INT, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _PTR, _INT]),
    "emu_vector_load": (ctypes.c_float, [_PTR]),
    "emu_vector_access_launch": (_INT, [_I64, _INT]),
}


class Emulator:
    """The emulation library (tests/cuda_emulation/harness.cpp) through ctypes."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(self.lib, name)
            function.restype, function.argtypes = restype, argtypes
        self.invalid_configuration = self.lib.emu_error_invalid_configuration()
        self.configure(SMALL_SM_COUNT)

    def configure(self, sm_count: int, host_threads: int = 1) -> None:
        self.lib.emu_configure(sm_count, host_threads)
        self.lib.emu_clear_log()

    def launches(self) -> list[tuple[tuple[int, int, int], tuple[int, int, int], int]]:
        """(grid, block, status) of every launch since the last configure()."""
        entry = (ctypes.c_int64 * 7)()
        result = []
        for i in range(self.lib.emu_log_size()):
            self.lib.emu_log_entry(i, entry)
            result.append((tuple(entry[0:3]), tuple(entry[3:6]), entry[6]))
        return result

    def call(self, launcher: str, *args) -> None:
        """Runs emu_<launcher>; a launch error fails the test with the CUDA error, as check_launch would raise it."""
        self.lib.emu_clear_log()
        status = getattr(self.lib, f"emu_{launcher}")(*args)
        if status == -1:
            raise AssertionError(f"{launcher}: {self.lib.emu_last_message().decode()}")
        if status != 0:
            raise AssertionError(f"{launcher}: CUDA kernel launch failed: {self.error_name(status)}; "
                                 f"launches: {self.launches()}")  # fmt: skip

    def error_name(self, status: int) -> str:
        names = {self.invalid_configuration: "cudaErrorInvalidConfiguration",
                 self.lib.emu_error_misaligned_address(): "cudaErrorMisalignedAddress"}  # fmt: skip
        return names.get(status, f"error {status}")


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    if emulation_build.find_cuda_include() is None or shutil.which(emulation_build.compiler()) is None:
        pytest.skip("needs the CUDA toolkit's headers (CUDA_HOME) and a host C++ compiler")
    return Emulator(emulation_build.build(VARIANT))


# ---- Buffers with guard space ---------------------------------------------------------------------------------------

# Random bytes on both sides of every buffer, checked untouched after each launch. Under AddressSanitizer a buffer ends
# where its allocation ends instead, so that a read past it (which a guard cannot see) is reported.
GUARD_BYTES = 64


class Buffer:
    """`numel` elements of `dtype`, `offset` bytes past a 64-byte boundary, between guards."""

    def __init__(self, numel: int, dtype: torch.dtype, offset: int = 0, values: torch.Tensor | None = None):
        size = dtype.itemsize
        assert offset % size == 0 and 0 <= offset < 64
        # sanitized, an aligned buffer starts where its allocation does, after the allocator's redzone
        lead = 0 if SANITIZED and offset == 0 else GUARD_BYTES + offset
        trail = 0 if SANITIZED else GUARD_BYTES
        self.raw = torch.randint(0, 256, (lead + numel * size + trail,), dtype=torch.uint8)
        assert self.raw.data_ptr() % 64 == 0
        self.begin, self.end = lead, lead + numel * size
        self.data = self.raw[self.begin : self.end].view(dtype)
        if values is not None:
            self.data.copy_(values.reshape(-1))
        self.snapshot = self.raw.clone()

    @property
    def ptr(self) -> int:
        return self.raw.data_ptr() + self.begin

    def view(self, shape, stride, start: int = 0) -> torch.Tensor:
        return self.data.as_strided(shape, stride, self.data.storage_offset() + start)

    def assert_untouched(self, what: str, whole: bool = False) -> None:
        """The guards (and, for an input, everything) hold the bytes they were given."""
        changed = self.raw != self.snapshot
        if not whole:
            changed[self.begin : self.end] = False
        if changed.any():
            first = int(changed.nonzero()[0, 0])
            raise AssertionError(
                f"{what}: {int(changed.sum())} bytes written outside the data, the first "
                f"{first - self.begin} bytes from its start ({self.end - self.begin} bytes long)"
            )


def sample(numel: int, dtype: torch.dtype, scale: float = 3.0) -> torch.Tensor:
    """Random values with the special ones mixed in (signed zeros, infinities, NaN, subnormals, the clamps' range)."""
    x = torch.randn(numel, dtype=torch.float64) * scale
    specials = torch.tensor(
        [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-40, -1e-40, 30.0, -30.0, 5e3, -0.75], dtype=torch.float64
    )
    if numel >= 2 * len(specials):
        x[torch.randperm(numel)[: len(specials)]] = specials
    return x.to(dtype)


def vector_width(dtype: torch.dtype) -> int:
    return 16 // dtype.itemsize


def element_offsets(dtype: torch.dtype) -> list[int]:
    """Every element-aligned byte offset from a 16-byte boundary: 0 takes the vector path, the others the scalar."""
    return list(range(0, 16, dtype.itemsize))


# ---- The flat launchers: gelu, gelu_backward ------------------------------------------------------------------------


def flat_sizes(dtype: torch.dtype) -> list[int]:
    """0, 1, a vector's width +-1, a block's worth +-1 (scalar: 256 elements; vectorized: 256 x 4 vectors), and the
    grid-stride wraps of both at SMALL_SM_COUNT (8 blocks), with a tail."""
    w = vector_width(dtype)
    vector_block = THREADS * VECTORS_PER_THREAD * w
    grid = 8 * SMALL_SM_COUNT
    sizes = {
        0,
        1,
        2,
        w - 1,
        w,
        w + 1,
        THREADS - 1,
        THREADS,
        THREADS + 1,
        vector_block - 1,
        vector_block,
        vector_block + 1,
        grid * THREADS + 1,
        grid * vector_block - 1,
        grid * vector_block + w + 3,
        2 * grid * vector_block + 1,
    }
    return sorted(sizes)


def run_flat(emulator, launcher, dtype, approximate, n, offsets):
    """Runs a flat launcher on n elements whose buffers start at `offsets` (one per operand, output last) and checks
    it against the CPU kernel, bit for bit, and every buffer's guards."""
    inputs = [
        Buffer(n, dtype, off, sample(n, dtype, 1.0 if k == 0 and len(offsets) == 3 else 3.0))
        for k, off in enumerate(offsets[:-1])
    ]
    out = Buffer(n, dtype, offsets[-1])
    code, mode = DTYPE_CODES[dtype], MODE_CODES[approximate]
    if launcher == "gelu_forward":
        emulator.call(launcher, inputs[0].ptr, out.ptr, n, code, mode)
        expected = torch.ops.gelu_ext.gelu(inputs[0].data, approximate)
    else:
        emulator.call(launcher, inputs[0].ptr, inputs[1].ptr, out.ptr, n, code, mode)
        expected = torch.ops.gelu_ext.gelu_backward(inputs[0].data, inputs[1].data, approximate)
    for k, buffer in enumerate(inputs):
        buffer.assert_untouched(f"input {k}", whole=True)
    out.assert_untouched("output")
    assert_bitwise_equal(out.data, expected)


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("launcher", LAUNCHERS[:2])
def test_flat_launchers_match_cpu_kernels_at_every_boundary(emulator, launcher, dtype, approximate):
    operands = 2 if launcher == "gelu_forward" else 3
    for n in flat_sizes(dtype):
        run_flat(emulator, launcher, dtype, approximate, n, [0] * operands)
    # every pointer offset, in each operand alone (a misaligned output or second input alone must not take the vector
    # path) and in all at once; sizes with a vector tail and with a wrap
    w = vector_width(dtype)
    for offset in element_offsets(dtype)[1:]:
        for k in range(operands):
            offsets = [offset if j == k else 0 for j in range(operands)]
            run_flat(emulator, launcher, dtype, approximate, 3 * THREADS * w + w - 1, offsets)
        run_flat(emulator, launcher, dtype, approximate, 8 * SMALL_SM_COUNT * THREADS + 3, [offset] * operands)


def test_the_launchers_grids_wrap_at_a_small_sm_count(emulator):
    """The boundary sizes do reach the grid-stride loops' second pass: the grid is clamped to one wave."""
    emulator.configure(SMALL_SM_COUNT)
    n = 2 * 8 * SMALL_SM_COUNT * THREADS * VECTORS_PER_THREAD * 4 + 1
    run_flat(emulator, "gelu_forward", torch.float32, "none", n, [0, 0])
    (vector_grid, vector_block, _), (tail_grid, _, _) = emulator.launches()
    assert vector_grid == (8 * SMALL_SM_COUNT, 1, 1) and vector_block == (THREADS, 1, 1)
    assert n // 4 > vector_grid[0] * THREADS * VECTORS_PER_THREAD  # more vectors than one pass of the grid covers
    assert tail_grid == (1, 1, 1)
    emulator.configure(1000)  # a full-size GPU: the same bits with a grid that never wraps
    run_flat(emulator, "gelu_forward", torch.float32, "none", n, [0, 0])
    assert emulator.launches()[0][0] == (math.ceil(n // 4 / (THREADS * VECTORS_PER_THREAD)), 1, 1)
    emulator.configure(SMALL_SM_COUNT)


def test_blocks_on_several_host_threads_give_the_same_bits(emulator):
    """Blocks handed to 4 host threads in whatever order they finish: the kernels depend on no block order (the
    sanitized run repeats this; the write counts below check that no two threads write one element)."""
    emulator.configure(SMALL_SM_COUNT, host_threads=4)
    try:
        run_flat(emulator, "gelu_backward", torch.bfloat16, "tanh", 5 * 8 * THREADS * 8 + 5, [0, 0, 0])
        run_rows(emulator, "geglu_backward", torch.float32, "none", 300, 37, "chunk_halves")
    finally:
        emulator.configure(SMALL_SM_COUNT)


# ---- The rows launchers: bias_gelu, geglu and their backwards -------------------------------------------------------

# misaligned: every operand one element off a 16-byte boundary; misaligned_first / misaligned_last: only the first
# input (x, or grad in a backward) or only the last (bias, up) is, the outputs and the other inputs aligned, so that
# the vector path is refused for each pointer on its own.
ROW_LAYOUTS = ["contiguous", "wider_rows", "odd_stride", "chunk_halves", "misaligned", "misaligned_first",
               "misaligned_last"]  # fmt: skip


def row_shapes(dtype: torch.dtype) -> list[tuple[int, int]]:
    """Empty rows and columns, one column, a vector's width +-1, one block's columns (256 threads) +-1 vector, many
    rows per block (a row-stride loop of several passes at SMALL_SM_COUNT)."""
    w = vector_width(dtype)
    return [
        (0, 7),
        (5, 0),
        (1, 1),
        (1, w - 1),
        (2, w),
        (3, w + 1),
        (4, 2 * w),
        (3, 255),
        (3, 257),
        (2, 32 * w - 1),
        (2, 256 * w),
        (2, 256 * w + w),
        (33, 31),
        (100, 2 * w + 1),
        (1000, 1),
        (600, w),
    ]


def row_operand(rows: int, cols: int, dtype: torch.dtype, layout: str, scale: float = 3.0):
    """(buffer, element offset, row stride) of one input in `layout`; chunk_halves returns the two halves of one
    [rows, 2 cols] buffer, as x.chunk(2, dim=-1) gives them."""
    w = vector_width(dtype)
    stride = {
        "contiguous": cols,
        "wider_rows": cols + w,
        "odd_stride": cols + 1,
        "chunk_halves": 2 * cols,
        "misaligned": cols,
    }[layout]
    extent = (rows - 1) * stride + (2 if layout == "chunk_halves" else 1) * cols if rows else 0
    offset = dtype.itemsize if layout == "misaligned" else 0
    buffer = Buffer(extent, dtype, offset, sample(extent, dtype, scale))
    if layout == "chunk_halves":
        return [(buffer, 0, stride), (buffer, cols, stride)]
    return [(buffer, 0, stride)]


def run_rows(emulator, launcher, dtype, approximate, rows, cols, layout, check_column_sum_bits=None):
    """Runs a rows launcher on [rows, cols] inputs laid out as `layout` (the bias: stride 0) and checks it against the
    CPU kernel: outputs bit for bit, grad_bias bit for bit where both sum in the same order (check_column_sum_bits;
    default: fewer than 32 rows), else within column_sum_error_bound; guards and inputs untouched."""
    code, mode = DTYPE_CODES[dtype], MODE_CODES[approximate]
    backward = launcher.endswith("backward")
    last = "misaligned" if layout in ("misaligned", "misaligned_last") else "aligned"  # bias or up
    first = "misaligned" if layout == "misaligned_first" else layout  # the first input's layout
    if layout in ("misaligned_first", "misaligned_last"):
        layout = "contiguous"  # every other operand
        first = "misaligned" if first == "misaligned" else layout
    operands = []
    if backward:
        operands += row_operand(rows, cols, dtype, "contiguous" if first == "chunk_halves" else first, 1.0)
        first = layout
    if launcher.startswith("geglu"):
        operands += (
            row_operand(rows, cols, dtype, layout)
            if layout == "chunk_halves"
            else (row_operand(rows, cols, dtype, first)
                  + row_operand(rows, cols, dtype, "misaligned" if last == "misaligned" else "wider_rows"))
        )  # fmt: skip
    else:
        operands += row_operand(rows, cols, dtype, first)[:1]
        bias = Buffer(cols, dtype, dtype.itemsize if last == "misaligned" else 0, sample(cols, dtype, 1.0))
        operands.append((bias, 0, 0))
    views = [b.view((rows, cols), (stride, 1), start) for b, start, stride in operands]
    args = []
    for buffer, start, stride in operands:
        args += [buffer.ptr + start * dtype.itemsize, stride]
    outputs = [Buffer(rows * cols, dtype, dtype.itemsize if layout == "misaligned" else 0)]
    if launcher == "geglu_backward":
        outputs.append(Buffer(rows * cols, dtype))
    if launcher == "bias_gelu_backward":
        outputs.append(Buffer(cols, dtype))
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        # the partial sums start as guard bytes too: a lane read before it is written shows
        partial = Buffer(emulator.lib.emu_column_sum_buffer_rows(rows) * cols, compute)
        emulator.call(launcher, *args, outputs[0].ptr, outputs[1].ptr, partial.ptr, rows, cols, code, mode)
        partial.assert_untouched("partial sums")
    else:
        emulator.call(launcher, *args, *[o.ptr for o in outputs], rows, cols, code, mode)
    for k, (buffer, _, _) in enumerate(operands):
        buffer.assert_untouched(f"input {k}", whole=True)
    for k, o in enumerate(outputs):
        o.assert_untouched(f"output {k}")

    bias_view = operands[-1][0].data if launcher.startswith("bias") else None
    if launcher == "bias_gelu_forward":
        expected = [torch.ops.gelu_ext.bias_gelu(views[0], bias_view, approximate)]
    elif launcher == "bias_gelu_backward":
        expected = list(torch.ops.gelu_ext.bias_gelu_backward(views[0], views[1], bias_view, approximate))
    elif launcher == "geglu_forward":
        expected = [torch.ops.gelu_ext.geglu(views[0], views[1], approximate)]
    else:
        expected = list(torch.ops.gelu_ext.geglu_backward(*views, approximate))
    for k, e in enumerate(expected[: 2 if launcher == "geglu_backward" else 1]):
        assert_bitwise_equal(outputs[k].data.view(rows, cols), e)
    if launcher == "bias_gelu_backward":
        grad_bias = outputs[1].data
        same_order = rows < 32 if check_column_sum_bits is None else check_column_sum_bits
        if same_order:  # one row block on the CPU, one row per lane on the GPU: both add the rows in order
            assert_bitwise_equal(grad_bias, expected[1])
        assert_column_sum_within_bound(grad_bias, expected[1], views[0], views[1], bias_view, approximate)


def assert_column_sum_within_bound(grad_bias, cpu_grad_bias, grad, x, bias, approximate):
    """Within column_sum_error_bound of the float64 sum of the exact terms, in every column whose terms are all
    finite; in the others (an infinity or NaN among the inputs) the CPU kernel's value, NaN for NaN: those do not
    depend on the order, but the float64 reference's can differ (inf * a derivative that underflows only in float)."""
    h = bias_gelu_sum(x, bias)
    first, second = gelu_derivative_terms(h, approximate)
    g = grad.to(torch.float64)
    terms, scales = g * (first + second), g.abs() * torch.maximum(first.abs(), second.abs())
    finite = terms.isfinite().all(0)
    bound = column_sum_error_bound(terms[:, finite], scales[:, finite], grad_bias.dtype, h[:, finite], approximate)
    err = (grad_bias[finite].to(torch.float64) - terms[:, finite].sum(0)).abs()
    assert (err <= bound).all(), f"grad_bias: worst error / bound {float((err / bound).max()):.3g}"
    assert_bitwise_equal(grad_bias[~finite], cpu_grad_bias[~finite])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_geglu_at_a_negative_zero_gate_keeps_the_sign(emulator, dtype):
    """gelu(-0) * up = -0 * up (csrc/gelu_math.h, gelu_erf_small_times), on both backends: the random inputs of the
    matrix tests hit a -0 gate only now and then."""
    gate, up = torch.full((1, 9), -0.0, dtype=dtype), torch.full((1, 9), 0.5, dtype=dtype)
    y = Buffer(9, dtype)
    emulator.call("geglu_forward", gate.data_ptr(), 9, up.data_ptr(), 9, y.ptr, 1, 9, DTYPE_CODES[dtype], 0)
    assert y.data.signbit().all(), y.data
    assert_bitwise_equal(y.data.view(1, 9), torch.ops.gelu_ext.geglu(gate, up, "none"))
    grad_gate, grad_up = Buffer(9, dtype), Buffer(9, dtype)
    args = (up.data_ptr(), 9, gate.data_ptr(), 9, up.data_ptr(), 9, grad_gate.ptr, grad_up.ptr, 1, 9)
    emulator.call("geglu_backward", *args, DTYPE_CODES[dtype], 0)
    expected = torch.ops.gelu_ext.geglu_backward(up, gate, up, "none")
    assert_bitwise_equal(grad_gate.data.view(1, 9), expected[0])
    assert_bitwise_equal(grad_up.data.view(1, 9), expected[1])


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("launcher", LAUNCHERS[2:])
def test_rows_launchers_match_cpu_kernels_at_every_boundary_and_layout(emulator, launcher, dtype, approximate):
    for rows, cols in row_shapes(dtype):
        for layout in ROW_LAYOUTS:
            if layout == "chunk_halves" and not launcher.startswith("geglu"):
                layout = "wider_rows"
            run_rows(emulator, launcher, dtype, approximate, rows, cols, layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_column_sums_from_one_row_to_far_more_rows_than_lanes(emulator, dtype):
    """grad_bias over 1 to 5,000 rows (256 row lanes at most): bits while the CPU's and the GPU's order agree (below
    32 rows), the documented bound beyond, where they add the rows in different groupings."""
    w = vector_width(dtype)
    for i, rows in enumerate((1, 2, 7, 8, 9, 31, 32, 255, 256, 257, 1000, 5000)):
        for j, cols in enumerate((1, w + 1, 2 * w) if rows > 257 else (1, w + 1, 2 * w, 300)):
            run_rows(emulator, "bias_gelu_backward", dtype, APPROXIMATE_MODES[(i + j) % 2], rows, cols, "contiguous")
    run_rows(emulator, "bias_gelu_backward", dtype, "none", 3000, 3 * w, "odd_stride")


def test_rows_geometry_clamps(emulator):
    """More row blocks than grid.y may have (65535) and a single column: the grid is clamped, each block walks more
    rows, and every element is still right; 2^17 rows of one column with column sums too."""
    emulator.configure(4096)  # enough resident blocks that the four waves rows_geometry asks for exceed 65535
    try:
        run_rows(emulator, "bias_gelu_forward", torch.float32, "none", 2**17, 1, "contiguous")
        assert emulator.launches()[0][0] == (1, 2**17 // 8, 1)
        run_rows(emulator, "bias_gelu_backward", torch.float32, "tanh", 2**17, 1, "contiguous")
        rows = 65535 * 8 + 8 * 7 + 1  # one row block more than grid.y can hold, plus a part
        run_rows(emulator, "geglu_forward", torch.float32, "none", rows, 1, "chunk_halves")
        ((grid, block, _),) = emulator.launches()
        assert grid == (1, 65535, 1) and block == (32, 8, 1)
    finally:
        emulator.configure(SMALL_SM_COUNT)


# ---- The driver's launch limits -----------------------------------------------------------------------------------

VALID_CONFIGURATIONS = [
    ((1, 1, 1), (1, 1, 1)),
    ((3, 2, 2), (8, 4, 2)),
    ((1, 1, 1), (1024, 1, 1)),
    ((1, 1, 1), (32, 32, 1)),
    ((1, 1, 1), (1, 1, 64)),
    ((2**31 - 1, 1, 1), (256, 1, 1)),
    ((1, 65535, 1), (32, 8, 1)),
    ((1, 1, 65535), (32, 1, 1)),
]
INVALID_CONFIGURATIONS = [
    ((1, 1, 1), (1025, 1, 1)),
    ((1, 1, 1), (32, 33, 1)),
    ((1, 1, 1), (1, 1, 65)),
    ((1, 1, 1), (0, 1, 1)),
    ((0, 1, 1), (256, 1, 1)),
    ((2**31, 1, 1), (256, 1, 1)),
    ((1, 65536, 1), (32, 8, 1)),
    ((1, 1, 65536), (32, 1, 1)),
]


@pytest.mark.parametrize(("grid", "block"), VALID_CONFIGURATIONS + INVALID_CONFIGURATIONS, ids=str)
def test_launch_configuration_is_checked_like_the_driver(emulator, grid, block):
    """Valid: every thread runs once (the grids of more than 1,000 blocks: the first, middle and last of each
    dimension). Invalid: cudaErrorInvalidConfiguration from cudaGetLastError, nothing runs, and the error is not
    sticky."""
    out = (ctypes.c_int64 * 2)()
    sampled = math.prod(grid) > 1000
    status = emulator.lib.emu_raw_launch(*grid, *block, out, int(sampled))
    threads = math.prod(block)
    blocks = math.prod(len({0, g // 2, g - 1}) for g in grid) if sampled else math.prod(grid)
    if (grid, block) in VALID_CONFIGURATIONS:
        assert status == 0 and out[0] == blocks * threads
        if not sampled:
            assert out[1] == blocks * threads * (blocks * threads - 1) // 2  # each linear index once
    else:
        assert status == emulator.invalid_configuration and out[0] == 0
        assert emulator.lib.emu_raw_launch(1, 1, 1, 32, 1, 1, out, 0) == 0 and out[0] == 32  # a next launch runs


@pytest.mark.parametrize("store", [False, True], ids=["load", "store"])
def test_a_misaligned_vector_access_is_the_gpus_error_not_a_crash(emulator, store):
    """A 16-byte vector access at an address that is not a multiple of 16 faults on a GPU. The emulation gives the
    same error from cudaGetLastError (x86 would crash on an aligned SSE move, or succeed with an unaligned one), so a
    launcher that takes its vector path for a misaligned pointer fails its test by name; a next launch runs."""
    misaligned = emulator.lib.emu_error_misaligned_address()
    for offset in (4, 8, 12, 20):
        assert emulator.lib.emu_vector_access_launch(offset, int(store)) == misaligned, offset
        assert emulator.lib.emu_vector_access_launch(0, int(store)) == 0
    assert emulator.lib.emu_vector_access_launch(32, int(store)) == 0


# ---- What the emulation cannot run must not compile ---------------------------------------------------------------

UNSUPPORTED = {
    "__syncthreads();": "barrier___syncthreads",
    "__shared__ float tile[256];": "shared_memory",
    "float v = __shfl_down_sync(0xffffffffu, 1.0f, 1);": "warp_shuffle___shfl_down_sync",
    "unsigned b = __ballot_sync(0xffffffffu, 1);": "warp_vote___ballot_sync",
    "static float total; atomicAdd(&total, 1.0f);": "atomic_atomicAdd",
    "int w = warpSize;": "warp_operation_warpSize",
}


def test_what_the_emulation_cannot_run_fails_its_build(tmp_path):
    """Each construct in a kernel of its own: the emulation build reports every one, by name."""
    include = emulation_build.find_cuda_include()
    if include is None:
        pytest.skip("needs the CUDA toolkit's headers")
    source = tmp_path / "unsupported_kernels.cu"
    lines = [f"__global__ void kernel_{i}() {{ {code} }}" for i, code in enumerate(UNSUPPORTED)]
    source.write_text("\n".join(lines) + "\n")
    command = emulation_build.compile_command(source, tmp_path / "out.o", "plain", include)
    env = dict(os.environ, LC_ALL="C")  # plain quotes in the messages
    result = subprocess.run([*command, "-fsyntax-only"], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    # the errors of each kernel follow a line "In function 'void kernel_<i>()'"
    per_kernel = dict(re.findall(r"In function 'void kernel_(\d+)\(\)':\n((?:(?!.*In function).*\n)*)", result.stderr))
    for i, (code, name) in enumerate(UNSUPPORTED.items()):
        reported = f"error: 'gelu_ext_emulation_cannot_run_{name}'" in per_kernel.get(str(i), "")
        assert reported, f"{code!r} was not reported:\n{result.stderr[-3000:]}"


def test_every_launch_goes_through_the_one_launch_helper():
    """A `<<<` outside csrc/cuda/launch.cuh would launch a kernel that the emulation never sees."""
    found = {}
    for path in sorted((ROOT / "csrc").rglob("*")):
        if path.is_file() and path.suffix in {".cu", ".cuh", ".h", ".cpp"}:
            code = [line.split("//", 1)[0] for line in path.read_text().splitlines()]
            hits = [i for i, line in enumerate(code, start=1) if "<<<" in line]
            if hits:
                found[str(path.relative_to(ROOT))] = hits
    assert list(found) == ["csrc/cuda/launch.cuh"] and len(found["csrc/cuda/launch.cuh"]) == 1, found
    machinery = (ROOT / "csrc" / "cuda" / "elementwise_cuda.cuh").read_text()
    assert machinery.count("launch_kernel(") == 4  # the flat vectorized and scalar, the rows and the column sums


# ---- Probes: write counts, and indices above 2^31 -----------------------------------------------------------------

PROBE_LAUNCHER_IDS = {name: i for i, name in enumerate(LAUNCHERS)}
INPUTS = {
    "gelu_forward": 1,
    "gelu_backward": 2,
    "bias_gelu_forward": 2,
    "bias_gelu_backward": 3,
    "geglu_forward": 2,
    "geglu_backward": 3,
}


def probe_layout(launcher, rows, cols, element_bytes, misaligned):
    """(row strides, extents, byte offsets) of the probe operands: inputs (a bias with stride 0; geglu's gate and up
    the halves of one wide row, here separate operands with its stride), then outputs."""
    w = 16 // element_bytes
    offset = element_bytes if misaligned else 0
    if launcher.startswith("gelu"):
        n_in = INPUTS[launcher]
        return [0] * n_in, [cols] * (n_in + 1), [offset] * (n_in + 1)
    strides = {
        "bias_gelu_forward": [cols + w, 0],
        "bias_gelu_backward": [cols, cols + w, 0],
        "geglu_forward": [2 * cols, 2 * cols],
        "geglu_backward": [cols, 2 * cols, 2 * cols],
    }[launcher]
    extents = [cols if s == 0 else (rows - 1) * s + cols for s in strides] + [rows * cols]
    if launcher == "geglu_backward":
        extents.append(rows * cols)
    if launcher == "bias_gelu_backward":
        extents.append(cols)
    return strides, extents, [offset] * len(extents)


def probe_run(emulator, launcher, element_bytes, rows, cols, misaligned, counts=None, capacity=0, sampled=False):
    strides, extents, offsets = probe_layout(launcher, rows, cols, element_bytes, misaligned)
    pointers = [c.data_ptr() for c in counts] if counts else []
    arrays = (ctypes.c_void_p * 5)(*pointers, *[None] * (5 - len(pointers)))
    written = torch.empty(capacity, dtype=torch.int64)
    count = ctypes.c_int64(0)
    emulator.lib.emu_clear_log()
    status = emulator.lib.emu_probe_run(
        PROBE_LAUNCHER_IDS[launcher],
        element_bytes,
        rows,
        cols,
        (ctypes.c_int64 * 3)(*strides, *[0] * (3 - len(strides))),
        (ctypes.c_int64 * 5)(*extents),
        (ctypes.c_int64 * 5)(*offsets),
        arrays,
        written.data_ptr() if capacity else None,
        capacity,
        ctypes.byref(count),
        int(sampled),
    )
    if status == -1:
        raise AssertionError(f"{launcher} probe: {emulator.lib.emu_last_message().decode()}")
    name = emulator.error_name(status)
    assert status == 0, f"{launcher} probe: CUDA kernel launch failed: {name}; launches: {emulator.launches()}"
    return strides, extents, written[: count.value]


WRITE_COUNT_CASES = [
    ("gelu_forward", 0, 3 * 8 * THREADS * 16 + 13),
    ("gelu_backward", 0, 8 * THREADS * 4 + 3),
    ("bias_gelu_forward", 300, 37),
    ("bias_gelu_backward", 700, 24),
    ("geglu_forward", 9, 2056),
    ("geglu_backward", 1000, 16),
]


@pytest.mark.parametrize("misaligned", [False, True], ids=["vectors", "scalars"])
@pytest.mark.parametrize("element_bytes", [2, 4, 8])
@pytest.mark.parametrize(("launcher", "rows", "cols"), WRITE_COUNT_CASES, ids=lambda v: str(v))
def test_probe_every_output_element_is_written_exactly_once(emulator, launcher, rows, cols, element_bytes, misaligned):
    """racecheck's host equivalent, over the launchers' own machinery with a storage type whose copies count their
    addresses, blocks spread over 3 host threads: each output element written once (twice would be two threads
    writing one element, or one thread twice), each input element read once (a bias: once per row), the elements
    between rows of a strided input never, and nothing outside any operand (that would abort the run)."""
    emulator.configure(SMALL_SM_COUNT, host_threads=3)
    try:
        strides, extents, _ = probe_layout(launcher, rows, cols, element_bytes, misaligned)
        counts = [torch.zeros(e, dtype=torch.int32) for e in extents]
        probe_run(emulator, launcher, element_bytes, rows, cols, misaligned, counts)
    finally:
        emulator.configure(SMALL_SM_COUNT)
    n_in = INPUTS[launcher]
    for k, c in enumerate(counts[n_in:]):
        assert (c == 1).all(), (
            f"output {k}: {int((c == 0).sum())} elements never written, {int((c > 1).sum())} more than once"
        )
    for k, (c, stride) in enumerate(zip(counts[:n_in], strides, strict=True)):
        if launcher.startswith("gelu"):
            expected = torch.ones_like(c)
        elif stride == 0:
            expected = torch.full_like(c, rows)
        else:
            expected = torch.zeros(rows * stride, dtype=torch.int32).view(rows, stride)
            expected[:, :cols] = 1
            expected = expected.view(-1)[: c.numel()]
        wrong = c != expected
        assert not wrong.any(), (
            f"input {k}: {int(wrong.sum())} elements read a wrong number of times, "
            f"first at {int(wrong.nonzero()[0, 0])}"
        )


def _pick(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


def _flat_expected(launches, n, w, vectorized):
    """The elements the sampled blocks of the flat launches own, by the grid-stride mapping, in Python's integers."""
    parts = []
    done = 0
    if vectorized and n // w:
        (grid, _, _) = launches.pop(0)[0:3]
        n_vectors, per_block = n // w, THREADS * VECTORS_PER_THREAD
        for b in _pick(grid[0]):
            v = (torch.arange(b * per_block, n_vectors, grid[0] * per_block)[:, None] + torch.arange(per_block)).view(
                -1
            )
            parts.append((v[v < n_vectors][:, None] * w + torch.arange(w)).view(-1))
        done = n_vectors * w
    if done < n:
        (grid, _, _) = launches.pop(0)[0:3]
        for b in _pick(grid[0]):
            i = (torch.arange(b * THREADS, n - done, grid[0] * THREADS)[:, None] + torch.arange(THREADS)).view(-1)
            parts.append(done + i[i < n - done])
    return torch.cat(parts)


def _rows_expected(launch, rows, cols, vec):
    (grid, block, _) = launch
    rows_per_block = -(-rows // grid[1])
    parts = []
    for by in _pick(grid[1]):
        for bx in _pick(grid[0]):
            c = torch.arange(min(cols, bx * block[0] * vec), min(cols, (bx + 1) * block[0] * vec))
            r = torch.arange(min(rows, by * rows_per_block), min(rows, (by + 1) * rows_per_block))
            parts.append((r[:, None] * cols + c).view(-1))
    return torch.cat(parts)


# (launcher, element bytes, rows, cols, misaligned): flat sizes above 2^31 elements and 2^31 vectors; rows whose
# offsets r * stride pass 2^32, with more than 65535 row blocks (the clamp) and a strided or stride-0 input.
VIRTUAL_CASES = [
    ("gelu_forward", 4, 0, 2**33 + 4 * 5 + 3, False),
    ("gelu_backward", 2, 0, 2**31 + 2**30 + 5, True),
    ("geglu_backward", 2, 2**17 + 3, 2**15 + 8, False),
    ("bias_gelu_forward", 4, 3 * 2**16 + 1, 2**15 + 1, True),
]


@pytest.mark.parametrize("case", VIRTUAL_CASES, ids=lambda c: f"{c[0]}-{c[1]}B-{c[2]}x{c[3]}")
def test_probe_indices_above_2_to_the_31(emulator, case):
    """Sizes of 4 to 17 GiB per operand, in address space that is reserved but never mapped, with probe elements that
    touch no memory: only the first, middle and last blocks of each grid dimension run, and what they write must be
    exactly the elements the grid-stride mapping gives them, computed here in Python's unbounded integers; a read or
    write outside every operand aborts the run. An index computed in 32 bits writes elsewhere."""
    launcher, element_bytes, rows, cols, misaligned = case
    w = 16 // element_bytes
    emulator.configure(4096)
    try:
        strides, _, written = probe_run(
            emulator, launcher, element_bytes, rows, cols, misaligned, capacity=2**23, sampled=True
        )
        launches = emulator.launches()
    finally:
        emulator.configure(SMALL_SM_COUNT)
    n_in = INPUTS[launcher]
    if launcher.startswith("gelu"):
        expected = [_flat_expected(list(launches), cols, w, not misaligned)]
    else:
        vec = 1 if misaligned or cols % w or any(s % w for s in strides) else w
        outputs = 2 if launcher == "geglu_backward" else 1
        expected = [_rows_expected(launches[0], rows, cols, vec)] * outputs
    assert max(int(e.max()) for e in expected) > 2**31  # the sampled blocks do reach above 2^31
    for k, e in enumerate(expected):
        mine = written[(written >> 48) == n_in + k] & (2**48 - 1)
        assert torch.equal(mine.sort().values, e.sort().values), (
            f"output {k}: {mine.numel()} writes, {e.numel()} expected; first difference at "
            f"{_first_difference(mine.sort().values, e.sort().values)}"
        )


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    i = int(diff[0, 0]) if diff.numel() else n
    written = a[i].item() if i < a.numel() else None
    expected = b[i].item() if i < b.numel() else None
    return f"position {i}: {written} written, {expected} expected"


# ---- Sanitizers ---------------------------------------------------------------------------------------------------

SANITIZER_OPTIONS = "detect_leaks=0:halt_on_error=1:abort_on_error=0:print_stacktrace=1"


def _sanitized_env() -> dict:
    env = dict(os.environ, GELU_EXT_EMULATION_VARIANT="asan", LD_PRELOAD=emulation_build.sanitizer_runtime())
    env.update(ASAN_OPTIONS=SANITIZER_OPTIONS, UBSAN_OPTIONS=SANITIZER_OPTIONS)
    return env


@pytest.fixture(scope="module")
def sanitized_library():
    if SANITIZED:
        pytest.skip("already the sanitized run")
    if emulation_build.find_cuda_include() is None:
        pytest.skip("needs the CUDA toolkit's headers")
    return emulation_build.build("asan")


@pytest.mark.slow
def test_sanitizer_reports_a_misaligned_vector_access(sanitized_library):
    """The alignment check is live: a 16-byte Vector load 4 bytes off a 16-byte boundary aborts with UBSan's report
    (the sanitized runs below would otherwise pass vacuously)."""
    code = (
        f"import ctypes; lib = ctypes.CDLL({str(sanitized_library)!r}); buf = ctypes.create_string_buffer(64); "
        "lib.emu_vector_load.argtypes = [ctypes.c_void_p]; "
        "lib.emu_vector_load((ctypes.addressof(buf) + 15) // 16 * 16 + 4)"
    )
    result = subprocess.run([sys.executable, "-c", code], env=_sanitized_env(), capture_output=True, text=True)
    assert result.returncode != 0 and "misaligned address" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_sanitizers_find_nothing(sanitized_library):
    """The layout, boundary and geometry tests again, on the AddressSanitizer + UndefinedBehaviorSanitizer build
    (alignment included; the first report fails the run): out-of-bounds reads and writes, misaligned vector
    accesses, integer overflow in the index arithmetic."""
    # -s: a sanitizer's report goes to the real stderr (captured output is lost when the report ends the process)
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(Path(__file__)),
        "-q",
        "-x",
        "-s",
        "-p",
        "no:cacheprovider",
        "-k",
        "match_cpu or column_sums or geometry or several_host_threads",
    ]
    # from the directory this process imported gelu_ext from, so that the child compares with the same CPU kernels
    package_root = Path(gelu_ext.__file__).resolve().parents[1]
    result = subprocess.run(command, env=_sanitized_env(), capture_output=True, text=True, cwd=package_root)
    output = result.stdout + result.stderr
    reports = re.findall(r".*(?:runtime error:|ERROR: AddressSanitizer|SUMMARY:|^FAILED ).*", output, re.M)
    assert result.returncode == 0, "\n".join([*reports, "...", output[-3000:]])
    passed = re.search(r"(\d+) passed", result.stdout)
    # 16 flat and 32 rows matrix tests, 4 column-sum tests, the geometry clamps and the host-threads test
    assert passed and int(passed.group(1)) == 54 and " skipped" not in result.stdout, result.stdout[-2000:]
