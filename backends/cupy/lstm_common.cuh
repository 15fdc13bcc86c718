// Device helpers shared by the LSTM kernel families (lstm_forward.cu,
// lstm_backward.cu).
//
// This header is compiled three ways, unchanged: by NVRTC through
// cupy.RawModule on a GPU, by nvcc in the compile check, and by g++ on the CPU
// with cuda_emulation.h force-included (the emulated backend). So: no
// #include of system headers (NVRTC has none), no warp intrinsics or
// __syncthreads (the emulation walks threads one after another), every float
// literal spelled through Real(...) so a float kernel never computes in double.
//
// Shapes: T time steps, B batch, H hidden size.
#pragma once

namespace polylstm {

// Logistic function in the two-branch form of the NumPy reference: exp() of a
// non-positive argument only, so large |a| neither overflows nor loses the
// small tail on the negative side.
__device__ __forceinline__ float sigmoid(float a) {
  if (a >= 0.0f) {
    return 1.0f / (1.0f + expf(-a));
  }
  const float e = expf(a);
  return e / (1.0f + e);
}

__device__ __forceinline__ double sigmoid(double a) {
  if (a >= 0.0) {
    return 1.0 / (1.0 + exp(-a));
  }
  const double e = exp(a);
  return e / (1.0 + e);
}

__device__ __forceinline__ float tanh_(float a) { return tanhf(a); }
__device__ __forceinline__ double tanh_(double a) { return tanh(a); }

// The time index sequence b is at when the recurrence is at processing step
// `step` (0..T-1), and whether that is a real step of the sequence.
//
// Forward: t = step, real while step < length.
// Reverse: each sequence starts at its own last valid step length-1, so
// t = length-1-step while step < length. The padded steps t >= length are
// then visited at steps step >= length with t = step, which makes every time
// index of every sequence visited exactly once: the kernels write every
// element of their (T, B, ...) outputs (zeros at padded steps).
struct StepTime {
  int t;
  bool valid;
};

__device__ __forceinline__ StepTime step_time(int step, int length, int reverse) {
  StepTime st;
  st.valid = step < length;
  st.t = (reverse && st.valid) ? length - 1 - step : step;
  return st;
}

// Grid-stride loop bounds: a kernel launched with fewer threads than
// elements still covers every element, each exactly once.
__device__ __forceinline__ long long grid_first() {
  return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride() {
  return (long long)blockDim.x * gridDim.x;
}

}  // namespace polylstm
