// SHA-256 checksums of shard files ("sha256:<64 hex digits>" in the manifest).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace fer {

// Incremental SHA-256 (FIPS 180-4).
class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  // Finishes and returns the 64-digit lower-case hex digest. The object must not be reused.
  std::string hex_digest();

 private:
  void compress(const std::uint8_t* block);
  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> buffer_{};
  std::size_t buffered_ = 0;
  std::uint64_t total_bytes_ = 0;
};

// "sha256:<hex>" of a whole file. Throws IoError naming the file.
std::string file_checksum(const std::filesystem::path& path);

}  // namespace fer
