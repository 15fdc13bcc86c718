// LSTM backward (BPTT): the fused pointwise kernel of one time step.
//
// The orchestration (polylstm_cupy/_orchestration.py) runs, after a forward
// that kept its tape (gates, cells):
//   dh_rec = 0
//   for step in T-1..0:
//     lstm_backward_<dtype>(...)                   this kernel: da_t, dc_{t-1}
//     dh_rec = da_step @ w_hh                        the only sequential product
//   dh0 = dh + dh_rec
//   dx, dw_ih, dw_hh, db: large products / sums over all steps
//   dpeephole = dp_part.reshape(T*B, 3, H).sum(0)
// so this kernel does everything between two recurrent products: it adds the
// recurrent gradient to the carried one, the output gradient dy_t, runs the
// cell's chain rule for the four gates at once, and writes each step's
// peephole partials -- reduced after the loop by a sum, never by atomics, so
// the result is the same bits on every run.
//
// One thread handles one (b, j) pair in a grid-stride loop over B*H elements.
//
// The gradient reaching h_t is split in two buffers so that the kernel can
// fold "padded steps pass the gradient through unchanged" into its single
// pass: dh_rec holds da_{t+1} @ w_hh from the previous launch (zero rows for
// sequences that were padded there, because their da is zero), dh holds what
// was carried past padded steps. A real step consumes both and sets dh to 0;
// a padded step moves their sum into dh.
//
// Entry points (extern "C"), one per dtype:
//   lstm_backward_f32   Real = float
//   lstm_backward_f64   Real = double
// POLYLSTM_ONLY_F32 / POLYLSTM_ONLY_F64 compile only one of them.
//
// Arguments, in order (T = time steps, B = batch, H = hidden size):
//   T          int                 number of time steps.
//   B          int                 batch size.
//   H          int                 hidden size.
//   step       int                 processing step of the forward pass being
//                                  undone, T-1..0.
//   reverse    int                 1: the forward direction ran backward in
//                                  time, each sequence from t = lengths[b]-1.
//   lengths    const int*   (B,)   valid steps per sequence, in 1..T, or NULL.
//   gates      const Real*  (T, B, 4H)  tape: post-activation i, f, g, o.
//   cells      const Real*  (T, B, H)   tape: c_t after each step.
//   c0         const Real*  (B, H)      initial cell state.
//   peephole   const Real*  (3, H)      peephole weights, rows i, f, o, or NULL.
//   dy         const Real*  (T, B, H)   gradient of the outputs; rows of
//                                  padded steps are never read.
//   dh_rec     const Real*  (B, H)      da_{previous launch} @ w_hh (zeros at
//                                  the first launch).
//   dh         Real*        (B, H)      in/out: gradient carried to h past
//                                  padded steps (see above).
//   dc         Real*        (B, H)      in: gradient reaching c_t; out: the one
//                                  reaching c_{t-1} (unchanged when padded).
//   da         Real*        (T, B, 4H)  out: row t = gradient of the gate
//                                  pre-activations a_i, a_f, a_g, a_o (zero at
//                                  padded steps).
//   da_step    Real*        (B, 4H)     out: this step's rows of da gathered
//                                  by sequence (row b = da[t_b, b]), the
//                                  input of the recurrent product; or NULL
//                                  when every sequence is at the same t (no
//                                  lengths, or a forward-in-time direction),
//                                  where da[t] itself is that input.
//   dp_part    Real*        (T, B, 3H)  out: row t = this step's peephole
//                                  gradient partials da_i*c_{t-1},
//                                  da_f*c_{t-1}, da_o*c_t (zero at padded
//                                  steps); or NULL when there are no peepholes.
// dh and dc are updated in place: element (b, j) is read and written by the
// same thread only.

#include "lstm_common.cuh"

namespace polylstm {

template <typename Real>
__device__ __forceinline__ void lstm_backward_pointwise(
    const int T, const int B, const int H, const int step, const int reverse,
    const int* __restrict__ lengths, const Real* __restrict__ gates,
    const Real* __restrict__ cells, const Real* __restrict__ c0,
    const Real* __restrict__ peephole, const Real* __restrict__ dy,
    const Real* __restrict__ dh_rec, Real* __restrict__ dh, Real* __restrict__ dc,
    Real* __restrict__ da, Real* __restrict__ da_step, Real* __restrict__ dp_part) {
  const long long n = (long long)B * H;
  for (long long idx = grid_first(); idx < n; idx += grid_stride()) {
    const int b = (int)(idx / H);
    const int j = (int)(idx - (long long)b * H);
    const int length = lengths ? lengths[b] : T;
    const StepTime st = step_time(step, length, reverse);

    const long long out_at = ((long long)st.t * B + b) * H + j;
    const long long gate_at = ((long long)st.t * B + b) * 4 * H + j;
    const long long step_at = (long long)b * 4 * H + j;
    const long long dp_at = ((long long)st.t * B + b) * 3 * H + j;
    const Real dh_in = dh[idx] + dh_rec[idx];

    if (!st.valid) {
      // Forward did nothing here: the gradient passes through untouched.
      dh[idx] = dh_in;
      da[gate_at] = Real(0);
      da[gate_at + H] = Real(0);
      da[gate_at + 2 * H] = Real(0);
      da[gate_at + 3 * H] = Real(0);
      if (da_step) {
        da_step[step_at] = Real(0);
        da_step[step_at + H] = Real(0);
        da_step[step_at + 2 * H] = Real(0);
        da_step[step_at + 3 * H] = Real(0);
      }
      if (dp_part) {
        dp_part[dp_at] = Real(0);
        dp_part[dp_at + H] = Real(0);
        dp_part[dp_at + 2 * H] = Real(0);
      }
      continue;
    }

    // The state before this step: the previous step in processing order, or
    // the initial state at each sequence's first processed step.
    const bool first = reverse ? (st.t + 1 >= length) : (st.t == 0);
    const long long prev_at = reverse ? out_at + (long long)B * H : out_at - (long long)B * H;
    const Real c_prev = first ? c0[idx] : cells[prev_at];

    const Real i = gates[gate_at];
    const Real f = gates[gate_at + H];
    const Real g = gates[gate_at + 2 * H];
    const Real o = gates[gate_at + 3 * H];
    const Real c_t = cells[out_at];
    const Real tanh_c = tanh_(c_t);

    const Real dh_t = dh_in + dy[out_at];
    const Real da_o = dh_t * tanh_c * o * (Real(1) - o);
    Real dc_t = dc[idx] + dh_t * o * (Real(1) - tanh_c * tanh_c);
    if (peephole) {
      dc_t += da_o * peephole[2 * H + j];  // o peeks at c_t
    }
    const Real da_i = dc_t * g * i * (Real(1) - i);
    const Real da_f = dc_t * c_prev * f * (Real(1) - f);
    const Real da_g = dc_t * i * (Real(1) - g * g);
    Real dc_prev = dc_t * f;
    if (peephole) {
      dc_prev += da_i * peephole[j] + da_f * peephole[H + j];
    }

    dh[idx] = Real(0);
    dc[idx] = dc_prev;
    da[gate_at] = da_i;
    da[gate_at + H] = da_f;
    da[gate_at + 2 * H] = da_g;
    da[gate_at + 3 * H] = da_o;
    if (da_step) {
      da_step[step_at] = da_i;
      da_step[step_at + H] = da_f;
      da_step[step_at + 2 * H] = da_g;
      da_step[step_at + 3 * H] = da_o;
    }
    if (dp_part) {
      dp_part[dp_at] = da_i * c_prev;
      dp_part[dp_at + H] = da_f * c_prev;
      dp_part[dp_at + 2 * H] = da_o * c_t;
    }
  }
}

}  // namespace polylstm

#define POLYLSTM_BACKWARD_ENTRY(NAME, Real)                                       \
  extern "C" __global__ void NAME(                                               \
      const int T, const int B, const int H, const int step, const int reverse,   \
      const int* __restrict__ lengths, const Real* __restrict__ gates,            \
      const Real* __restrict__ cells, const Real* __restrict__ c0,                \
      const Real* __restrict__ peephole, const Real* __restrict__ dy,             \
      const Real* __restrict__ dh_rec, Real* __restrict__ dh,                     \
      Real* __restrict__ dc, Real* __restrict__ da, Real* __restrict__ da_step,   \
      Real* __restrict__ dp_part) {                                               \
    polylstm::lstm_backward_pointwise<Real>(T, B, H, step, reverse, lengths,      \
                                            gates, cells, c0, peephole, dy,       \
                                            dh_rec, dh, dc, da, da_step, dp_part); \
  }

#ifndef POLYLSTM_ONLY_F64
POLYLSTM_BACKWARD_ENTRY(lstm_backward_f32, float)
#endif
#ifndef POLYLSTM_ONLY_F32
POLYLSTM_BACKWARD_ENTRY(lstm_backward_f64, double)
#endif
