#pragma once
// Starting a data-parallel run from the environment (trainer/rank_env.h): for more than one rank,
// this process takes the GPU of its local rank, rank 0 makes the NCCL id, the TCP rendezvous
// hands it to every rank and stays open as the liveness channel, and the NCCL communicator is
// built under its watchdog. NCCL_NVLS_ENABLE=0 is set first unless the user set it.
#include <memory>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"
#include "trainer/communicator.h"
#include "trainer/grad_reducer.h"
#include "trainer/rank_env.h"
#include "trainer/rendezvous.h"
#include "trainer/run_config.h"

namespace scanline {

struct DistributedRun {
  RankInfo info;
  Device device;
  std::unique_ptr<Rendezvous> rendezvous;  // declared before comm: outlives the watchdog polling it
  std::unique_ptr<Communicator> comm;

  // After a successful run: tells the peers this rank's exit is not a loss.
  void finish();
};

// nullptr for a single process (no launcher variables, or a world of 1). Throws Error naming the
// variable or the GPU count when the environment cannot work, CommError when the rendezvous or
// NCCL fails.
std::unique_ptr<DistributedRun> start_distributed(const RunConfig& config);

// The model's side of a data-parallel start (the trainer's and `bench train`'s): every rank takes
// rank 0's parameters (the same seed gives the same init; this makes it so whatever the ranks did
// before), then the returned reducer averages their gradients in d's buckets and dtype.
std::unique_ptr<GradReducer> replicate_and_reduce(std::vector<Tensor> params, Communicator& comm,
                                                  const DistributedConfig& d);

}  // namespace scanline
