#pragma once
// CPU reference of selective_scan, the ground truth of the CUDA kernels. Inputs are first copied
// to contiguous float64 (B and C time-major, (batch, groups, L, N), so a time step's states are
// adjacent) and every result is computed in double, then rounded once to its dtype. Inputs may
// have any strides; the caller has checked shapes and dtypes.
//
// Determinism: the forward gives each (batch, channel) row to one thread. The backward splits
// work into tasks of up to kScanChannelsPerTask channels of one group and batch row; a task
// recomputes each channel's states (O(L·N) scratch), walks time backwards, and adds its channels'
// dB/dC contributions into its own partial buffer in channel order. dA, dD and d delta_bias are
// kept per (batch, channel) and summed over batch in order; the task partials of dB/dC are summed
// in task order. No result depends on the thread count.
#include <array>
#include <utility>

#include "core/tensor.h"

namespace scanline::cpu {

// Channels of one group that share a dB/dC partial buffer: bounds the partials' memory to
// batch · d_inner / 64 · L · N doubles while leaving batch · d_inner / 64 tasks to spread.
inline constexpr int64_t kScanChannelsPerTask = 64;

struct SelectiveScanArgs {
  Tensor u, delta, A, B, C, D, z, delta_bias, initial_state;  // D ... initial_state optional
  bool delta_softplus = false;
};

// The gradients, one per input (undefined where not asked for or the input is undefined).
struct SelectiveScanGrads {
  Tensor u, delta, A, B, C, D, z, delta_bias, initial_state;
};

// Returns y (u's dtype) and final_state (A's dtype), both contiguous.
std::pair<Tensor, Tensor> selective_scan_forward(const SelectiveScanArgs& args);

// grad_y: (batch, d_inner, L) of u's dtype; grad_final_state: (batch, d_inner, N) of A's dtype;
// either may have any strides (zero strides included). needs[i] says whether the gradient of
// input i (in the order u, delta, A, B, C, D, z, delta_bias, initial_state) is wanted.
SelectiveScanGrads selective_scan_backward(const SelectiveScanArgs& args, const Tensor& grad_y,
                                           const Tensor& grad_final_state, const std::array<bool, 9>& needs);

}  // namespace scanline::cpu
