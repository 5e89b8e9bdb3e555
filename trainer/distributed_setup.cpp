#include "trainer/distributed_setup.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <utility>

#include "trainer/nccl_communicator.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/device_query.h"
#include "core/cuda/stream.h"
#endif

namespace scanline {

void DistributedRun::finish() {
  if (comm) comm->barrier();  // nobody reports the others' exits as losses while they still run
  if (rendezvous) rendezvous->finish();
}

std::unique_ptr<DistributedRun> start_distributed(const RunConfig& config) {
  const RankInfo info = rank_info_from_env();
  if (info.world_size == 1) return nullptr;
  SCANLINE_CHECK(config.train.device != DeviceChoice::cpu, "rank ", info.rank, ": ", info.world_size,
                 " ranks (", info.source, ") need GPUs, but train.device is cpu; data-parallel runs use one "
                 "GPU a process");
#ifndef SCANLINE_HAVE_CUDA
  SCANLINE_FAIL("rank ", info.rank, ": ", info.world_size, " ranks (", info.source,
                ") need NCCL, but this build has no CUDA (configure with SCANLINE_CUDA=ON)");
#else
  // One visible GPU (a scheduler that binds one GPU a task, e.g. srun --gpus-per-task=1) is this
  // rank's; with several, the local rank picks one.
  const int gpus = cuda::device_count();
  SCANLINE_CHECK(gpus >= 1 && (gpus == 1 || info.local_rank < gpus), "rank ", info.rank, ": local rank ",
                 info.local_rank, " (", info.source, ") needs GPU ", info.local_rank, " but this process sees ", gpus,
                 " (CUDA_VISIBLE_DEVICES?); start at most one process a GPU");
  const int gpu = gpus == 1 ? 0 : info.local_rank;
  auto run = std::make_unique<DistributedRun>();
  run->info = info;
  run->device = Device::cuda(gpu);
  cuda::set_device(gpu);
  default_nccl_environment();
  const auto timeout = std::chrono::seconds(120);
  spdlog::info("rank {} of {} ({}), GPU {}: rendezvous at {}:{}", info.rank, info.world_size, info.source, gpu,
               info.master_addr, info.master_port);
  run->rendezvous =
      std::make_unique<Rendezvous>(info, info.rank == 0 ? nccl_unique_id() : std::vector<uint8_t>{}, timeout);
  NcclOptions options;
  options.init_timeout = timeout;
  Rendezvous* links = run->rendezvous.get();
  options.liveness = [links] { return links->lost_peer(); };
  run->comm = make_nccl_communicator(info, gpu, run->rendezvous->blob(), std::move(options));
  return run;
#endif
}

std::unique_ptr<GradReducer> replicate_and_reduce(std::vector<Tensor> params, Communicator& comm,
                                                  const DistributedConfig& d) {
  // References into `params`: a communicator may finish a collective at wait_pending().
  for (Tensor& p : params) comm.broadcast(p, 0);
  comm.wait_pending();
  return std::make_unique<GradReducer>(
      std::move(params), comm,
      GradReducerOptions{.bucket_mb = d.bucket_mb, .reduce_dtype = compute_dtype(d.reduce_dtype)});
}

}  // namespace scanline
