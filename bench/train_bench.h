#pragma once
// `scanline bench train --config X.yaml [--steps N] [--warmup W]`: whole training steps of the
// config's model on cuda:0 as the trainer runs them (forward in train.precision with f32
// parameters, mean cross-entropy in f32, backward, global-norm clipping, fused AdamW), on random
// tokens of (train.batch_size, data.seq_len) so that the data pipeline is not timed. After W
// warm-up steps, CUDA events split each of N steps into forward, backward and optimizer (clip +
// AdamW); it prints the medians, tokens/s, model FLOPs utilisation (6·N·tokens/s over the bf16
// matrix rate measured in the same run and over the H100's 989 TFLOP/s dense bf16) and the
// caching allocator's peak, and the loss after the steps. Then, for a bf16 run, the same steps
// from the same initialisation in f32: every step's loss must agree within bf16 tolerance
// (trainer/fixed_batch_steps.h), else the table says FAILED and the exit code is 1. One GPU: the
// all-reduce phase of a
// data-parallel step is measured by the trainer's distributed runs (docs/PERFORMANCE.md).
// configs/bench/ holds issue 10's three set-ups.
namespace scanline::bench {

int run_train_bench(int argc, char** argv);

}  // namespace scanline::bench
