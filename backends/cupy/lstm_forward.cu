// LSTM forward: the fused pointwise kernel of one time step.
//
// The orchestration (polylstm_cupy/_orchestration.py) runs, cuDNN/haste style:
//   xw = x.reshape(T*B, I) @ w_ih.T                 one product for all steps
//   for step in 0..T-1:
//     hw = h @ w_hh.T                               the recurrent product
//     lstm_forward_<dtype>(...)                     this kernel
// so everything between two recurrent products -- bias, peepholes, the four
// gate activations, the cell update, the output, length masking and, when
// training, the tape -- happens in one pass over (B, H).
//
// One thread handles one (b, j) pair, i.e. the four gates of hidden unit j of
// sequence b, in a grid-stride loop over B*H elements.
//
// Entry points (extern "C"), one per dtype:
//   lstm_forward_f32   Real = float
//   lstm_forward_f64   Real = double
// Defining POLYLSTM_ONLY_F32 or POLYLSTM_ONLY_F64 compiles only that one (the
// backend compiles one module per dtype, so a float32 module holds no double
// code at all).
//
// Arguments, in order (T = time steps, B = batch, H = hidden size):
//   T          int                 number of time steps.
//   B          int                 batch size.
//   H          int                 hidden size.
//   step       int                 processing step, 0..T-1.
//   reverse    int                 1: the direction runs backward in time, each
//                                  sequence starting at t = lengths[b]-1.
//   lengths    const int*   (B,)   valid steps of each sequence, in 1..T, or
//                                  NULL: all sequences have T steps.
//   xw         const Real*  (T, B, 4H)  x_t @ w_ih.T for every step, gates
//                                  i, f, g, o (no bias).
//   hw         const Real*  (B, 4H)     h_{t-1} @ w_hh.T of this step.
//   bias       const Real*  (4H,)       b, gates i, f, g, o.
//   peephole   const Real*  (3, H)      peephole weights, rows i, f, o, or NULL.
//   h          Real*        (B, H)      in: h_{t-1}; out: h_t. Left unchanged
//                                  for sequences at a padded step.
//   c          Real*        (B, H)      in: c_{t-1}; out: c_t. Same rule.
//   y          Real*        (T, B, H)   out: row t = h_t (zero at padded steps).
//   gates      Real*        (T, B, 4H)  out: row t = post-activation i, f, g, o
//                                  (zero at padded steps), or NULL (no tape).
//   cells      Real*        (T, B, H)   out: row t = c_t (zero at padded
//                                  steps), or NULL (no tape).
// h and c are updated in place: element (b, j) is read and written by the
// same thread only, and hw was computed from h before this launch.

#include "lstm_common.cuh"

namespace polylstm {

template <typename Real>
__device__ __forceinline__ void lstm_forward_pointwise(
    const int T, const int B, const int H, const int step, const int reverse,
    const int* __restrict__ lengths, const Real* __restrict__ xw,
    const Real* __restrict__ hw, const Real* __restrict__ bias,
    const Real* __restrict__ peephole, Real* __restrict__ h, Real* __restrict__ c,
    Real* __restrict__ y, Real* __restrict__ gates, Real* __restrict__ cells) {
  const long long n = (long long)B * H;
  for (long long idx = grid_first(); idx < n; idx += grid_stride()) {
    const int b = (int)(idx / H);
    const int j = (int)(idx - (long long)b * H);
    const int length = lengths ? lengths[b] : T;
    const StepTime st = step_time(step, length, reverse);

    // Offsets of (t, b, j) in a (T, B, H) array and of (t, b, gate 0, j) in
    // a (T, B, 4H) array.
    const long long out_at = ((long long)st.t * B + b) * H + j;
    const long long gate_at = ((long long)st.t * B + b) * 4 * H + j;

    if (!st.valid) {
      // The state stays as it is; the trajectories read zero.
      y[out_at] = Real(0);
      if (cells) cells[out_at] = Real(0);
      if (gates) {
        gates[gate_at] = Real(0);
        gates[gate_at + H] = Real(0);
        gates[gate_at + 2 * H] = Real(0);
        gates[gate_at + 3 * H] = Real(0);
      }
      continue;
    }

    const long long rec_at = (long long)b * 4 * H + j;
    Real a_i = xw[gate_at] + hw[rec_at] + bias[j];
    Real a_f = xw[gate_at + H] + hw[rec_at + H] + bias[H + j];
    const Real a_g = xw[gate_at + 2 * H] + hw[rec_at + 2 * H] + bias[2 * H + j];
    Real a_o = xw[gate_at + 3 * H] + hw[rec_at + 3 * H] + bias[3 * H + j];

    const Real c_prev = c[idx];
    if (peephole) {
      a_i += peephole[j] * c_prev;
      a_f += peephole[H + j] * c_prev;
    }
    const Real i = sigmoid(a_i);
    const Real f = sigmoid(a_f);
    const Real g = tanh_(a_g);
    const Real c_new = f * c_prev + i * g;
    if (peephole) {
      a_o += peephole[2 * H + j] * c_new;
    }
    const Real o = sigmoid(a_o);
    const Real h_new = o * tanh_(c_new);

    h[idx] = h_new;
    c[idx] = c_new;
    y[out_at] = h_new;
    if (cells) cells[out_at] = c_new;
    if (gates) {
      gates[gate_at] = i;
      gates[gate_at + H] = f;
      gates[gate_at + 2 * H] = g;
      gates[gate_at + 3 * H] = o;
    }
  }
}

}  // namespace polylstm

#define POLYLSTM_FORWARD_ENTRY(NAME, Real)                                      \
  extern "C" __global__ void NAME(                                             \
      const int T, const int B, const int H, const int step, const int reverse, \
      const int* __restrict__ lengths, const Real* __restrict__ xw,             \
      const Real* __restrict__ hw, const Real* __restrict__ bias,               \
      const Real* __restrict__ peephole, Real* __restrict__ h,                  \
      Real* __restrict__ c, Real* __restrict__ y, Real* __restrict__ gates,     \
      Real* __restrict__ cells) {                                               \
    polylstm::lstm_forward_pointwise<Real>(T, B, H, step, reverse, lengths, xw, \
                                           hw, bias, peephole, h, c, y, gates,  \
                                           cells);                              \
  }

#ifndef POLYLSTM_ONLY_F64
POLYLSTM_FORWARD_ENTRY(lstm_forward_f32, float)
#endif
#ifndef POLYLSTM_ONLY_F32
POLYLSTM_FORWARD_ENTRY(lstm_forward_f64, double)
#endif
