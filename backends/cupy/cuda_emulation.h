// CUDA built-ins for running the backend's unchanged .cu kernels on the CPU.
//
// The emulated backend ("cupy-emulated") compiles each kernel file as
//   g++ -std=c++17 -O2 -shared -fPIC -x c++ <launcher>.cpp
// where the generated launcher includes this header, then the .cu file, then
// one POLYLSTM_EMU_EXPORT(entry) line per kernel entry point. Nothing in the
// .cu file changes between the GPU build (NVRTC via cupy.RawModule) and this
// one.
//
// What is emulated: the function-space qualifiers, dim3/uint3,
// threadIdx/blockIdx/blockDim/gridDim (thread-local, set by the launcher
// before it calls the kernel body for each (block, thread) of the grid), and
// the math functions the kernels call. What is deliberately not: __shared__,
// __syncthreads and warp intrinsics. The launcher runs the threads of a grid
// one after another, which is a faithful schedule only for kernels whose
// threads do not talk to each other -- the grid-stride pointwise kernels this
// backend uses. A kernel that reached for __syncthreads would fail to compile
// here instead of being emulated wrongly.
//
// The launcher takes its arguments as CUDA's cuLaunchKernel does (void**
// kernelParams, one pointer to each argument's value) and reports each
// kernel's parameter types, so the Python side can check that it packs every
// argument with exactly the C type the kernel declares -- the check that
// catches a Python float passed to a `float` parameter, which CuPy would pack
// as a double and the GPU would read as garbage.
#pragma once

#include <math.h>  // expf(float) etc. as C functions, as NVRTC provides them

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
// __restrict__ needs no definition: g++ knows it as a keyword.

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

namespace polylstm_emu {
inline thread_local uint3 thread_idx{0, 0, 0};
inline thread_local uint3 block_idx{0, 0, 0};
inline thread_local dim3 block_dim{1, 1, 1};
inline thread_local dim3 grid_dim{1, 1, 1};
}  // namespace polylstm_emu

// Kernels read these exactly as on the GPU (threadIdx.x, blockDim.x, ...).
#define threadIdx (::polylstm_emu::thread_idx)
#define blockIdx (::polylstm_emu::block_idx)
#define blockDim (::polylstm_emu::block_dim)
#define gridDim (::polylstm_emu::grid_dim)

// Fast-math intrinsics, mapped to the precise functions (the GPU ones differ
// by a few ulp; the GPU test allows for that).
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a); }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline double rsqrt(double a) { return 1.0 / sqrt(a); }
template <typename T>
inline T __ldg(const T* p) { return *p; }

namespace polylstm_emu {

// The code Python's packer compares with an argument: pointer-ness and the
// element/scalar type as a NumPy dtype string ("f4", "i4", ...).
template <typename T>
constexpr const char* scalar_code() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return "f4";
  else if constexpr (std::is_same_v<U, double>) return "f8";
  else if constexpr (std::is_same_v<U, bool>) return "b1";
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 4) return "i4";
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 8) return "i8";
  else if constexpr (std::is_integral_v<U> && std::is_unsigned_v<U> && sizeof(U) == 4) return "u4";
  else if constexpr (std::is_integral_v<U> && std::is_unsigned_v<U> && sizeof(U) == 8) return "u8";
  else static_assert(sizeof(U) == 0, "kernel parameter type not known to the emulation");
}

template <typename T>
struct param_code {
  static constexpr const char* kind = "v";  // by value
  static constexpr const char* type = scalar_code<T>();
};

template <typename T>
struct param_code<T*> {
  // Pointer to device memory: "c" when the kernel only reads through it,
  // "p" when it may write (the packer refuses read-only arrays there).
  static constexpr const char* kind = std::is_const_v<T> ? "c" : "p";
  static constexpr const char* type = scalar_code<T>();
};

// "v:i4,c:f4,p:f4,..." -- one entry per kernel parameter, in order.
template <typename... Args>
const char* signature(void (*)(Args...)) {
  static const std::string text = [] {
    std::string s;
    ((s += std::string(param_code<std::decay_t<Args>>::kind) + ":" +
           param_code<std::decay_t<Args>>::type + ","),
     ...);
    if (!s.empty()) s.pop_back();
    return s;
  }();
  return text.c_str();
}

template <typename... Args, std::size_t... I>
void call_with(void (*kernel)(Args...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(args[I])...);
}

// Index k of a walk over 0..n-1, forward or backward.
inline unsigned int walk(unsigned int k, unsigned int n, bool backward) {
  return backward ? n - 1 - k : k;
}

// Walks the grid: every block, every thread of the block, each seeing its own
// threadIdx/blockIdx. `backward` reverses the order of blocks and of threads:
// a kernel whose result depends on the order its threads run in -- a data
// race on a GPU, where they run at once -- gives different results under the
// two walks (the tests compare them). Returns 0, or -1 when the argument count
// does not match the kernel's (the Python side checks first; this is the
// last line of defence against reading past `args`).
template <typename... Args>
int launch(void (*kernel)(Args...), const unsigned int* grid, const unsigned int* block,
           void** args, int nargs, bool backward) {
  if (nargs != (int)sizeof...(Args)) return -1;
  grid_dim = dim3(grid[0], grid[1], grid[2]);
  block_dim = dim3(block[0], block[1], block[2]);
  for (unsigned int bz = 0; bz < grid[2]; ++bz)
    for (unsigned int by = 0; by < grid[1]; ++by)
      for (unsigned int bx = 0; bx < grid[0]; ++bx) {
        block_idx = uint3{walk(bx, grid[0], backward), walk(by, grid[1], backward),
                          walk(bz, grid[2], backward)};
        for (unsigned int tz = 0; tz < block[2]; ++tz)
          for (unsigned int ty = 0; ty < block[1]; ++ty)
            for (unsigned int tx = 0; tx < block[0]; ++tx) {
              thread_idx = uint3{walk(tx, block[0], backward), walk(ty, block[1], backward),
                                 walk(tz, block[2], backward)};
              call_with(kernel, args, std::index_sequence_for<Args...>{});
            }
      }
  return 0;
}

}  // namespace polylstm_emu

// One line per kernel entry point in the generated launcher: exports
//   int         polylstm_emu_launch_<entry>(grid[3], block[3], void** args, int nargs,
//                                           int backward)
//   const char* polylstm_emu_signature_<entry>()
#define POLYLSTM_EMU_EXPORT(ENTRY)                                                  \
  extern "C" int polylstm_emu_launch_##ENTRY(const unsigned int* grid,              \
                                             const unsigned int* block, void** args, \
                                             int nargs, int backward) {             \
    return ::polylstm_emu::launch(ENTRY, grid, block, args, nargs, backward != 0);  \
  }                                                                                 \
  extern "C" const char* polylstm_emu_signature_##ENTRY() {                         \
    return ::polylstm_emu::signature(ENTRY);                                        \
  }
