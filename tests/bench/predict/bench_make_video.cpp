// The inputs of tests/bench/predict/run.sh: a synthetic 640x480 video (synth_video.h: one or two
// fer-synth faces moving over a textured background) and an untrained ResNet9 checkpoint of the
// given width (48x48 grayscale, the seven synth classes). Speed does not depend on the weights.
//
// Usage: bench_make_video OUT_DIR FACES FRAMES [WIDTH=1] [FPS=25]
//   writes OUT_DIR/scene-<FACES>.mp4 (H.264 when FFmpeg has libx264, else MPEG-4 Part 2) and
//   OUT_DIR/model.pt.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "synth_face.h"
#include "synth_video.h"
#include "train/checkpoint.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s OUT_DIR FACES FRAMES [WIDTH=1] [FPS=25]\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out = argv[1];
  fer::synth_video::SceneOptions scene;
  scene.faces = std::atoi(argv[2]);
  scene.frames = std::atoi(argv[3]);
  const double width = argc > 4 ? std::atof(argv[4]) : 1.0;
  scene.fps = argc > 5 ? std::atof(argv[5]) : 25.0;
  if (scene.faces < 1 || scene.faces > 2 || scene.frames < 1 || width <= 0 || scene.fps <= 0) {
    std::fprintf(stderr, "bench_make_video: bad arguments\n");
    return 2;
  }
  std::filesystem::create_directories(out);
  const std::filesystem::path video = out / ("scene-" + std::to_string(scene.faces) + ".mp4");
  // H.264 is what cameras and phones record; MPEG-4 Part 2 where FFmpeg has no libx264.
  if (!fer::synth_video::write_video(video, scene, cv::VideoWriter::fourcc('a', 'v', 'c', '1')) &&
      !fer::synth_video::write_video(video, scene, cv::VideoWriter::fourcc('m', 'p', '4', 'v'))) {
    std::fprintf(stderr, "bench_make_video: cannot write %s\n", video.c_str());
    return 1;
  }
  fer::CheckpointMeta meta;
  meta.classes = fer::tools::synth_class_names();
  meta.mean = {0.45};
  meta.std = {0.22};
  meta.height = meta.width = 48;
  meta.channels = 1;
  meta.model.in_channels = 1;
  meta.model.num_classes = static_cast<int>(meta.classes.size());
  meta.model.width = width;
  meta.optimizer = "adam";
  torch::manual_seed(1);
  fer::ResNet9 model(meta.model);
  model->eval();
  fer::save_checkpoint(out / "model.pt", model, nullptr, meta);
  std::printf("video=%s frames=%d fps=%.2f faces=%d checkpoint=%s width=%g\n", video.c_str(),
              scene.frames, scene.fps, scene.faces, (out / "model.pt").c_str(), width);
  return 0;
}
