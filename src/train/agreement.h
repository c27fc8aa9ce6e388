// Start-up agreement (DESIGN.md "Distributed contracts"): every rank must train the same thing.
#pragma once

#include <string>

#include "model/resnet9.h"
#include "train/train_config.h"

namespace fer {

class ControlPlane;
class DataPlane;
struct Manifest;

// Hash of the config fields that change what a run computes (not threads, workers, logging,
// max_steps, nor how the global batch is split over `world` ranks and train.accumulate_steps
// micro-batches): a resume may change those.
std::string config_hash(const TrainConfig& config, int world);

// Collective (control plane): compares hashes of the resolved config, the manifest and the
// parameter shapes over all ranks. A mismatch throws the same CommError on every rank, naming the
// first differing rank and item — never a hang.
void check_agreement(ControlPlane& control, const std::string& config_yaml,
                     const Manifest& manifest, ResNet9& model);

// Collective (data plane): every rank's parameters and buffers become rank 0's.
void broadcast_model(DataPlane& data, ResNet9& model);

}  // namespace fer
