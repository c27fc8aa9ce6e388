// fashion_folder: writes a Fashion-MNIST subset (Debian's dataset-fashion-mnist, via
// tests/unit/real_images.h) as the ImageFolder layout `fer-pack imagefolder` packs, for the
// fidelity scripts of this folder.
//
// Usage: fashion_folder <root> [--size S] [--train N] [--val N] [--test N]
//                              [--dither D] [--rare-class C --rare-count N]
//                              [--rare-val-count N] [--rare-test-count N]
//   train = the first N images of the train file, val the next N, test the first N of t10k.
//   --dither D: adds a fixed per-pixel offset in [-D, D] gray levels (a fixed seed, the same on
//               every run), rounded and clamped, after upscaling, to every split: breaks the exact
//               ties of the black backgrounds while the images stay the real ones.
//   --rare-class C --rare-count N: keeps only the first N train images of class C (an imbalanced
//               train split, as FER2013's disgust); val and test keep every image of it unless
//               --rare-val-count / --rare-test-count cut them too (FER2013's val and test have
//               the train split's class shares).
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "real_images.h"

using fer::testing::RealImageSet;

namespace {

RealImageSet dithered(RealImageSet s, int d, std::uint32_t seed) {
  if (d <= 0) return s;
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> u(-d, d);
  for (auto& p : s.pixels) {
    const int v = static_cast<int>(p) + u(gen);
    p = static_cast<std::uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
  }
  return s;
}

RealImageSet keep_few(const RealImageSet& s, int cls, int count) {
  RealImageSet out = s;
  out.pixels.clear();
  out.labels.clear();
  out.count = 0;
  const auto n = static_cast<std::size_t>(s.height * s.width);
  int kept = 0;
  for (int64_t i = 0; i < s.count; ++i) {
    if (s.labels[i] == cls && kept++ >= count) continue;
    out.labels.push_back(s.labels[i]);
    out.pixels.insert(out.pixels.end(), s.pixels.begin() + i * n, s.pixels.begin() + (i + 1) * n);
    ++out.count;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: fashion_folder <root> [--size S] [--train N] [--val N] "
                         "[--test N] [--dither D] [--rare-class C --rare-count N] "
                         "[--rare-val-count N] [--rare-test-count N]\n");
    return 2;
  }
  const std::string root = argv[1];
  int size = 32, train = 1600, val = 200, test = 500, dither = 0, rare = -1, rare_count = 0;
  int rare_val = -1, rare_test = -1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (k == "--size") size = v;
    else if (k == "--train") train = v;
    else if (k == "--val") val = v;
    else if (k == "--test") test = v;
    else if (k == "--dither") dither = v;
    else if (k == "--rare-class") rare = v;
    else if (k == "--rare-count") rare_count = v;
    else if (k == "--rare-val-count") rare_val = v;
    else if (k == "--rare-test-count") rare_test = v;
    else { std::fprintf(stderr, "unknown option %s\n", k.c_str()); return 2; }
  }
  namespace t = fer::testing;
  if (!t::fashion_mnist_available()) {
    std::fprintf(stderr, "fashion_folder: %s is missing; apt-get install dataset-fashion-mnist\n",
                 t::kFashionMnistDir);
    return 3;
  }
  auto tr = dithered(t::upscale(t::load_fashion_mnist("train", 0, train), size), dither, 1);
  auto va = dithered(t::upscale(t::load_fashion_mnist("train", train, val), size), dither, 2);
  auto te = dithered(t::upscale(t::load_fashion_mnist("test", 0, test), size), dither, 3);
  if (rare >= 0) tr = keep_few(tr, rare, rare_count);
  if (rare >= 0 && rare_val >= 0) va = keep_few(va, rare, rare_val);
  if (rare >= 0 && rare_test >= 0) te = keep_few(te, rare, rare_test);
  t::write_image_folder(root, {{"train", tr}, {"val", va}, {"test", te}});
  std::printf("fashion_folder: %s: %lld train, %lld val, %lld test at %dx%d, dither %d\n",
              root.c_str(), static_cast<long long>(tr.count), static_cast<long long>(va.count),
              static_cast<long long>(te.count), size, size, dither);
  return 0;
}
