#pragma once
// `scanline bench train --config X.yaml [--steps N] [--warmup W] [--overlap 0|1] [--profile-steps
// P]`: whole training steps of the config's model on cuda:0 as the trainer runs them (forward in
// train.precision with f32 parameters, mean cross-entropy in f32, backward, global-norm clipping,
// fused AdamW), on random tokens of (train.batch_size, data.seq_len) so that the data pipeline is
// not timed. After W warm-up steps, CUDA events split each of N steps into forward, backward and
// optimizer (clip + AdamW); it prints the medians, tokens/s, model FLOPs utilisation (6·N·tokens/s
// over the bf16 matrix rate measured in the same run and over the H100's 989 TFLOP/s dense bf16)
// and the caching allocator's peak, and the loss after the steps. Then, for a bf16 run, the same
// steps from the same initialisation in f32: the last step's loss must agree within bf16 tolerance
// (trainer/fixed_batch_steps.h), else the check says FAILED and the exit code is 1; the curves are
// printed side by side with their largest per-step difference. Before that, P
// more steps (default 3, untimed) run under CUPTI and the top kernels by GPU time a step are
// printed (bench/kernel_profile.h; builds without CUPTI say so).
//
// Data parallel (issue 8: the overlap, backward with and without communication), when started as
// `scanline train` is, by `scanline launch --nproc 2 -- bench train --config X.yaml` or
// torchrun-style variables (trainer/distributed_setup.h): each rank runs on its GPU with its own
// random tokens, train.batch_size / world of them (train.batch_size is the global batch), from rank
// 0's parameters, and a GradReducer averages the gradients in distributed.bucket_mb buckets of
// distributed.reduce_dtype, during the backward when overlapping (distributed.overlap, or
// --overlap 1) or all after it (--overlap 0). The table (rank 0's events) adds the all-reduce wait,
// the communication left exposed after the backward (finish(): the last buckets and the copy back
// to .grad); the backward includes what overlapped it, and tokens/s is given a GPU and for all
// ranks. The loss is the ranks' mean; the f32 check, a single-GPU check, is skipped.
// configs/bench/ holds issue 10's three set-ups; configs/hybrid_130m_ddp.yaml issue 8's.
namespace scanline::bench {

int run_train_bench(int argc, char** argv);

}  // namespace scanline::bench
