// Writes the seed corpus of fuzz_shard: small valid shards (8x8x1) as the real writer makes
// them, plain and deflated, one chunk and several. Usage: make_shard_seeds OUT_DIR
#include <filesystem>
#include <string>
#include <vector>

#include "data/shard.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::filesystem::path out = argv[1];
  std::filesystem::create_directories(out);
  struct Seed {
    const char* name;
    int images, compress, chunk;
  };
  for (const Seed& s : {Seed{"plain-3", 3, 0, 4}, Seed{"deflate-3", 3, 6, 4},
                        Seed{"chunks-10", 10, 0, 4}, Seed{"empty", 0, 0, 4}}) {
    // Seeds have no .h5 suffix: the repository ignores *.h5 (generated datasets).
    fer::ShardWriter writer(out / s.name, fer::ShardLayout{"train", 0, 1, 8, 8, 1}, s.compress,
                            s.chunk);
    std::vector<std::uint8_t> image(64);
    for (int i = 0; i < s.images; ++i) {
      for (int p = 0; p < 64; ++p) image[p] = static_cast<std::uint8_t>((i * 37 + p * 5) % 256);
      writer.append(image.data(), static_cast<std::uint8_t>(i % 7), "img" + std::to_string(i));
    }
    writer.close();
  }
  return 0;
}
