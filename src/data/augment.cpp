#include "data/augment.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <random>
#include <vector>

#include "common/errors.h"
#include "common/random.h"

namespace fer {
namespace {

// numpy/torch "reflect" index for i in [-(n-1), 2n-2]: the edge pixel is not repeated.
inline int reflect(int i, int n) {
  if (i < 0) return -i;
  if (i >= n) return 2 * (n - 1) - i;
  return i;
}

void check_geometry(int height, int width, int channels, int pad) {
  FER_CHECK(height >= 1 && width >= 1 && channels >= 1, ConfigError, "image shape ", height, "x",
            width, "x", channels, " is empty");
  FER_CHECK(pad >= 0 && pad < height && pad < width, ConfigError, "augmentation padding ", pad,
            " must be in [0, min(height, width)) = [0, ", std::min(height, width),
            ") for reflect padding");
}

}  // namespace

AugmentDecision draw_augment(std::uint64_t seed, std::int64_t epoch, std::int64_t index,
                             const AugmentOptions& options) {
  std::mt19937_64 rng(derive_seed({seed, kAugmentSeedTag, static_cast<std::uint64_t>(epoch),
                                   static_cast<std::uint64_t>(index)}));
  const std::uint64_t positions = 2 * static_cast<std::uint64_t>(options.pad) + 1;
  // Always three draws in a fixed order: an option switched off must not shift the others.
  const int dy = static_cast<int>(uniform_index(rng, positions));
  const int dx = static_cast<int>(uniform_index(rng, positions));
  const bool flip = uniform01(rng) < 0.5;
  AugmentDecision decision;
  decision.dy = options.crop ? dy : options.pad;
  decision.dx = options.crop ? dx : options.pad;
  decision.flip = options.flip && flip;
  return decision;
}

void augment_with(const std::uint8_t* src, int height, int width, int channels, int pad, int dy,
                  int dx, bool flip, std::uint8_t* dst) {
  check_geometry(height, width, channels, pad);
  FER_CHECK(dy >= 0 && dy <= 2 * pad && dx >= 0 && dx <= 2 * pad, ConfigError, "crop offset (", dy,
            ", ", dx, ") is outside [0, ", 2 * pad, "]");
  const int col_shift = dx - pad;  // output column x reads padded column x + dx = source x + shift
  const std::size_t pixel = static_cast<std::size_t>(channels);
  const std::size_t row_bytes = static_cast<std::size_t>(width) * pixel;
  // Without a flip, the output columns whose source lies inside the image form one run that is a
  // plain copy; only the pad-wide margins need the reflected index. A flip is the unflipped row
  // reversed: flipped(y, x) = P(y + dy, w-1-x + dx) = unflipped(y, w-1-x).
  const int inside_begin = std::max(0, -col_shift);
  const int inside_end = std::min(width, width - col_shift);
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* src_row = src + reflect(y + dy - pad, height) * row_bytes;
    std::uint8_t* dst_row = dst + y * row_bytes;
    std::memcpy(dst_row + inside_begin * pixel, src_row + (inside_begin + col_shift) * pixel,
                (inside_end - inside_begin) * pixel);
    for (int x = 0; x < inside_begin; ++x) {
      std::memcpy(dst_row + x * pixel, src_row + reflect(x + col_shift, width) * pixel, pixel);
    }
    for (int x = inside_end; x < width; ++x) {
      std::memcpy(dst_row + x * pixel, src_row + reflect(x + col_shift, width) * pixel, pixel);
    }
    if (!flip) continue;
    if (channels == 1) {
      std::reverse(dst_row, dst_row + width);
    } else {
      for (int a = 0, b = width - 1; a < b; ++a, --b) {
        std::swap_ranges(dst_row + a * pixel, dst_row + (a + 1) * pixel, dst_row + b * pixel);
      }
    }
  }
}

void augment_image(const std::uint8_t* src, int height, int width, int channels, std::uint64_t seed,
                   std::int64_t epoch, std::int64_t index, const AugmentOptions& options,
                   std::uint8_t* dst) {
  check_geometry(height, width, channels, options.pad);
  const AugmentDecision d = draw_augment(seed, epoch, index, options);
  augment_with(src, height, width, channels, options.pad, d.dy, d.dx, d.flip, dst);
}

Normalizer::Normalizer(int channels, const double* mean, const double* std)
    : tables_(static_cast<std::size_t>(channels)) {
  for (int ch = 0; ch < channels; ++ch) {
    FER_CHECK(std[ch] > 0, ConfigError, "normalization std of channel ", ch, " must be > 0");
    for (int v = 0; v < 256; ++v) {
      tables_[ch][v] = static_cast<float>((v / 255.0 - mean[ch]) / std[ch]);
    }
  }
}

void Normalizer::apply(const std::uint8_t* src, int height, int width, float* dst) const {
  const std::size_t plane = static_cast<std::size_t>(height) * width;
  const std::size_t channels = tables_.size();
  for (std::size_t ch = 0; ch < channels; ++ch) {
    const std::array<float, 256>& table = tables_[ch];
    float* out = dst + ch * plane;
    const std::uint8_t* in = src + ch;
    if (channels == 1) {
      for (std::size_t p = 0; p < plane; ++p) out[p] = table[in[p]];
    } else {
      for (std::size_t p = 0; p < plane; ++p) out[p] = table[in[p * channels]];
    }
  }
}

void normalize_to_chw(const std::uint8_t* src, int height, int width, int channels,
                      const double* mean, const double* std, float* dst) {
  Normalizer(channels, mean, std).apply(src, height, width, dst);
}

}  // namespace fer
