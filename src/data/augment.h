// Training-time augmentation and normalization of uint8 HWC images, torch-free.
//
// augment_image() is torchvision's RandomCrop(size, padding=pad, padding_mode="reflect") followed
// by RandomHorizontalFlip(p=0.5). Its random draws come only from std::mt19937_64 seeded by
// derive_seed({seed, kAugmentSeedTag, epoch, index}) where `index` is the sample's index in the
// split, never from the rank or the thread: the same sample in the same epoch is augmented the
// same way whatever the world size, worker count or call order (DESIGN.md).
//
// Threading: every function here is pure (no shared state) and may run on any number of threads.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace fer {

// Mixed into the augmentation seed so it never shares a stream with other seeded draws.
inline constexpr std::uint64_t kAugmentSeedTag = 0x4155474d454e5431ULL;  // "AUGMENT1"

struct AugmentOptions {
  int pad = 4;       // reflect padding on each side before the crop, pixels; 0 <= pad < H, W
  bool crop = true;  // random crop offset in [0, 2*pad] per axis; false = centred (no shift)
  bool flip = true;  // horizontal flip with probability 1/2
};

// What one draw decided for one image.
struct AugmentDecision {
  int dy = 0;         // crop offset into the padded image, rows, in [0, 2*pad]
  int dx = 0;         // crop offset into the padded image, columns, in [0, 2*pad]
  bool flip = false;  // mirror left-right after the crop
};

// The decision for sample `index` in `epoch`. Always draws dy, dx, then the flip, in that order,
// and only then applies the options (crop=false gives dy=dx=pad, flip=false gives no flip), so
// switching one option off does not change the other's draws.
AugmentDecision draw_augment(std::uint64_t seed, std::int64_t epoch, std::int64_t index,
                             const AugmentOptions& options);

// Crop-and-flip with explicit parameters: dst(y, x) = P(y + dy, xs + dx) with xs = w-1-x when
// flipping (else x), where P is src reflect-padded by `pad` on each side (numpy/torch "reflect":
// the edge pixel is not repeated, P(-1) = src(1)). src and dst are h*w*c bytes, HWC, and must not
// overlap. Needs 0 <= pad < h, 0 <= pad < w, and dy, dx in [0, 2*pad]; throws ConfigError
// otherwise.
void augment_with(const std::uint8_t* src, int height, int width, int channels, int pad, int dy,
                  int dx, bool flip, std::uint8_t* dst);

// draw_augment + augment_with: the seeded random crop and flip of sample `index` in `epoch`.
// Same size in and out (uint8 HWC). Throws ConfigError for a pad the image cannot reflect.
void augment_image(const std::uint8_t* src, int height, int width, int channels, std::uint64_t seed,
                   std::int64_t epoch, std::int64_t index, const AugmentOptions& options,
                   std::uint8_t* dst);

// dst[c][y][x] = (src[y][x][c] / 255 - mean[c]) / std[c], computed in double and stored as float:
// uint8 HWC in, float CHW out (what the network takes). mean and std hold `channels` values in
// [0,1] units (the manifest's normalization).
// Builds a Normalizer and applies it once; per-image callers should keep a Normalizer instead.
void normalize_to_chw(const std::uint8_t* src, int height, int width, int channels,
                      const double* mean, const double* std, float* dst);

// normalize_to_chw with the per-channel work done once: a 256-entry table per channel holding the
// exact double formula rounded once to float, so results are the same bits on every platform and
// no pixel needs a division. Immutable after construction: share it between threads freely.
class Normalizer {
 public:
  // mean and std hold `channels` values; ConfigError for a std <= 0.
  Normalizer(int channels, const double* mean, const double* std);
  // uint8 HWC image of this many channels in, float CHW out.
  void apply(const std::uint8_t* src, int height, int width, float* dst) const;
  int channels() const { return static_cast<int>(tables_.size()); }

 private:
  std::vector<std::array<float, 256>> tables_;
};

}  // namespace fer
