// Deterministic randomness that is identical on every platform and standard library.
//
// std::mt19937_64's output sequence is fixed by the C++ standard, but std:: distributions and
// std::shuffle are not; so every random choice in fer-dist goes through these helpers. Seeds are
// derived from explicit tuples, e.g. derive_seed({seed, epoch}) for the sampler.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <random>
#include <vector>

namespace fer {

// splitmix64 finalizer: a bijective 64-bit mix.
inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A seed that depends on every element of `parts` and their order.
inline std::uint64_t derive_seed(std::initializer_list<std::uint64_t> parts) {
  std::uint64_t h = 0x6a09e667f3bcc909ULL;
  for (std::uint64_t p : parts) h = mix64(h ^ mix64(p));
  return h;
}

// Uniform integer in [0, n) without modulo bias (rejection sampling). n > 0.
inline std::uint64_t uniform_index(std::mt19937_64& rng, std::uint64_t n) {
  const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
  std::uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

// Uniform double in [0, 1) from the top 53 bits.
inline double uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

// Fisher-Yates shuffle with uniform_index: the same permutation everywhere for the same rng state.
template <typename T>
void shuffle_in_place(std::vector<T>& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(uniform_index(rng, i));
    std::swap(v[i - 1], v[j]);
  }
}

}  // namespace fer
