// Forward selective scan: one block per (batch, channel) row, time in chunks (see
// cuda/selective_scan.h for the layout and cuda/selective_scan_common.cuh for the scans).
#include "cuda/selective_scan.h"
#include "cuda/selective_scan_common.cuh"

namespace scanline::cuda {
namespace {

using namespace scan;

template <typename T>
struct FwdParams {
  ScanInputs<T> in;
  const math_t<T>* h0;       // (batch, d_inner, N) or null (zeros)
  T* y;                      // (batch, d_inner, L)
  math_t<T>* final_state;    // (batch, d_inner, N)
  math_t<T>* chunk_states;   // (batch, d_inner, n_chunks, N): the state entering each chunk
};

// Block = one (batch, channel) row; dynamic shared memory: the carried state, 2 x N math values
// (slot c & 1 holds the state entering chunk c, slot (c + 1) & 1 receives the one leaving it).
template <typename T, int kThreads, int kItems>
__global__ void __launch_bounds__(kThreads) selective_scan_fwd_kernel(FwdParams<T> p) {
  using W = math_t<T>;
  constexpr int kWarps = kThreads / 32;
  __shared__ ScanSmem<W, kWarps> scan_smem;
  extern __shared__ __align__(16) unsigned char fwd_smem[];
  W* carry = reinterpret_cast<W*>(fwd_smem);

  const ScanInputs<T>& in = p.in;
  const int64_t row = blockIdx.x, L = in.L, N = in.N, n_chunks = in.n_chunks;
  const int64_t d = row % in.d_inner, b = row / in.d_inner, g = d / in.per_group;
  const T* B_rows = in.B + (b * in.groups + g) * N * L;
  const T* C_rows = in.C + (b * in.groups + g) * N * L;
  const W* A_row = in.A + d * N;
  const W D = in.D ? in.D[d] : W(0);

  for (int64_t n = threadIdx.x; n < N; n += kThreads) carry[n] = p.h0 ? p.h0[row * N + n] : W(0);
  __syncthreads();

  int slot = 0;
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t t0 = c * in.chunk + int64_t(threadIdx.x) * kItems;
    W u[kItems], dt[kItems], raw[kItems], dtu[kItems], out[kItems];
    load_steps<kItems>(in, row, d, t0, u, dt, raw);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      dtu[i] = dt[i] * u[i];
      out[i] = D * u[i];
    }
    const W* carry_in = carry + (c & 1) * N;
    W* carry_out = carry + ((c + 1) & 1) * N;
    for (int64_t n = 0; n < N; ++n) {
      const W A_n = A_row[n];
      W Bv[kItems], Cv[kItems], a[kItems], bx[kItems];
      load_items(B_rows + n * L, t0, L, in.vec, Bv);
      load_items(C_rows + n * L, t0, L, in.vec, Cv);
      // The thread's composite map over its steps, then the block's exclusive prefix of them.
      W pa = W(1), pb = W(0);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        a[i] = exp_m(dt[i] * A_n);
        bx[i] = dtu[i] * Bv[i];
        pb = a[i] * pb + bx[i];
        pa = a[i] * pa;
      }
      scan_prefix<kWarps>(pa, pb, scan_smem, slot);
      slot ^= 1;
      const W h_chunk = carry_in[n];  // read after the scan's __syncthreads: the last chunk wrote it
      W h = pa * h_chunk + pb;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        h = a[i] * h + bx[i];
        out[i] += Cv[i] * h;
      }
      // Steps past L are identities, so the last thread holds the state after the chunk's last step.
      if (threadIdx.x == kThreads - 1) carry_out[n] = h;
      if (threadIdx.x == 0) p.chunk_states[(row * n_chunks + c) * N + n] = h_chunk;
    }
    if (in.z) {
      W zv[kItems];
      load_items(in.z + row * L, t0, L, in.vec, zv);
#pragma unroll
      for (int i = 0; i < kItems; ++i) out[i] *= zv[i] * sigmoid_m(zv[i]);
    }
    store_items(p.y + row * L, t0, L, in.vec, out);
  }
  __syncthreads();
  const W* last = carry + (n_chunks & 1) * N;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) p.final_state[row * N + n] = last[n];
}

}  // namespace

int64_t selective_scan_chunk_size(int64_t L, int64_t N, DType dtype) {
  return plan_chunks(L, N, dtype == DType::f64 ? 8 : 4).chunk;
}

ScanForwardResult selective_scan_fwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                     const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& delta_bias,
                                     bool delta_softplus, const Tensor& initial_state) {
  constexpr const char* op = "selective_scan";
  check_cuda_tensor(op, u, "u");
  DeviceGuard guard(u.device().index);
  const Prepared prep = prepare(op, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state);
  const int64_t rows = prep.batch * prep.d_inner, N = prep.N;
  ScanForwardResult r;
  r.y = empty(u.shape(), u.options());
  r.final_state = empty({prep.batch, prep.d_inner, N}, A.options());
  r.chunk_states = empty({prep.batch, prep.d_inner, prep.plan.n_chunks, N}, A.options());
  if (rows == 0) return r;
  dispatch_scan_dtype(u.dtype(), op, [&]<typename T>() {
    using W = math_t<T>;
    FwdParams<T> p;
    p.in = scan_inputs<T>(prep);
    p.in.vec = p.in.vec && aligned16(data_at<T>(r.y));
    p.h0 = ptr_or_null<W>(prep.h0);
    p.y = data_at<T>(r.y);
    p.final_state = data_at<W>(r.final_state);
    p.chunk_states = data_at<W>(r.chunk_states);
    const size_t smem = size_t(2 * N) * sizeof(W);
    dispatch_plan(prep.plan, [&]<int kThreads, int kItems>() {
      auto kernel = selective_scan_fwd_kernel<T, kThreads, kItems>;
      allow_shared_memory(kernel, smem);
      kernel<<<unsigned(rows), kThreads, smem, current_stream()>>>(p);
      CUDA_CHECK_LAUNCH("selective_scan forward");
    });
  });
  return r;
}

}  // namespace scanline::cuda
