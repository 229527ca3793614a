// Keeps gelu_ext's libraries loadable on glibc 2.28 (manylinux_2_28, the platform of torch's own wheels) when they
// are built on a newer glibc. setup.py force-includes this header (-include) into every C++ translation unit, ahead
// of everything else, so it needs no #include in the sources; tests/test_packaging.py checks the symbol versions of
// the built libraries against auditwheel's manylinux_2_28 policy.
//
// Three references would otherwise need a glibc newer than 2.28:
//   exp@GLIBC_2.29    glibc 2.29 gave exp, exp2, log, log2 and pow new versions that drop the SVID error-handling
//                     wrappers (matherr, _LIB_VERSION, gone since 2.27); it keeps the old versions, which compute the
//                     same values. Bind to those.
//   dlsym@GLIBC_2.34  torch/csrc/stable/macros.h looks up newer shim functions with dlsym. glibc 2.34 moved dlsym
//                     from libdl into libc and keeps the old version in both; older glibc defines it in libdl.so.2,
//                     which setup.py adds as a dependency (the dynamic linker matches the version, not the file).
//   __libc_single_threaded@GLIBC_2.32
//                     libstdc++'s headers (ext/atomicity.h) read it to skip atomic reference counting while a process
//                     has one thread. glibc has no older version. Each translation unit gets its own copy instead,
//                     always 0: "not known to be single-threaded", so the atomic path is always taken, which is
//                     correct with any number of threads (the compiler folds the constant; no symbol is left).
//
// The device-side pass of nvcc (__CUDA_ARCH__) sees none of this: it does not link against glibc.
#pragma once

#if defined(__linux__) && !defined(__CUDA_ARCH__)
#include <features.h>  // defines __GLIBC__; this header is included first, before any system header
#endif

#if defined(__GLIBC__) && !defined(__CUDA_ARCH__)
#if defined(__x86_64__)
#define GELU_EXT_GLIBC_BASE_VERSION "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define GELU_EXT_GLIBC_BASE_VERSION "GLIBC_2.17"
#endif

#ifdef GELU_EXT_GLIBC_BASE_VERSION
// A .symver for a function a translation unit does not call emits nothing.
__asm__(".symver exp,exp@" GELU_EXT_GLIBC_BASE_VERSION);
__asm__(".symver exp2,exp2@" GELU_EXT_GLIBC_BASE_VERSION);
__asm__(".symver log,log@" GELU_EXT_GLIBC_BASE_VERSION);
__asm__(".symver log2,log2@" GELU_EXT_GLIBC_BASE_VERSION);
__asm__(".symver pow,pow@" GELU_EXT_GLIBC_BASE_VERSION);
__asm__(".symver dlsym,dlsym@" GELU_EXT_GLIBC_BASE_VERSION);
#endif

#ifdef __cplusplus
extern "C" {
#endif
// sys/single_threaded.h's later `extern char __libc_single_threaded;` redeclares this internal-linkage object.
__attribute__((unused)) static char __libc_single_threaded = 0;
#ifdef __cplusplus
}
#endif
#endif
