// File-system helpers that never leave a half-written output behind.
#pragma once

#include <filesystem>
#include <string>

namespace fer {

// Writes `content` to `path` atomically: a temporary sibling is written, flushed to disk and
// renamed over `path`. A crash leaves either the old file or the new one. Throws IoError.
void write_file_atomic(const std::filesystem::path& path, const std::string& content);

// Reads a whole file; throws IoError naming the path.
std::string read_file(const std::filesystem::path& path);

// fsync() a file or directory by path; throws IoError.
void fsync_path(const std::filesystem::path& path);

// Swaps two existing paths (files or directories) in one atomic rename (Linux renameat2
// RENAME_EXCHANGE). Returns false, changing nothing, where the file system or C library cannot.
bool exchange_paths(const std::filesystem::path& a, const std::filesystem::path& b);

// A directory that is removed (recursively) on destruction unless release()d. Used to build an
// output under a temporary name and rename it into place only when complete.
class ScopedTempDir {
 public:
  // Creates "<parent>/.<stem>.tmp-<pid>" next to where `final_path` will be. Throws IoError.
  explicit ScopedTempDir(const std::filesystem::path& final_path);
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Moves the directory to `final_path`. With `replace`, an existing final_path is swapped out
  // and removed only after the new one is in place. Throws IoError.
  void commit(const std::filesystem::path& final_path, bool replace);

 private:
  std::filesystem::path path_;
  bool owned_ = true;
};

}  // namespace fer
