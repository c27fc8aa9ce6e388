#include "common/fs_util.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28)
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "common/errors.h"

namespace fs = std::filesystem;

namespace fer {

void fsync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError("cannot open " + path.string() + " to sync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw IoError("cannot sync " + path.string() + ": " + std::strerror(err));
}

void write_file_atomic(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.parent_path() / ("." + path.filename().string() + ".tmp-" +
                                             std::to_string(::getpid()));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError("cannot create " + tmp.string() + ": " + std::strerror(errno));
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw IoError("cannot write " + tmp.string() + " (disk full?)");
    }
  }
  fsync_path(tmp);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw IoError("cannot rename " + tmp.string() + " to " + path.string() + ": " + ec.message());
  }
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot read " + path.string() + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw IoError("error while reading " + path.string());
  return text.str();
}

ScopedTempDir::ScopedTempDir(const fs::path& final_path) {
  fs::path target = final_path;
  if (target.filename().empty()) target = target.parent_path();  // "out/" -> "out"
  fs::path parent = target.parent_path();
  if (parent.empty()) parent = ".";
  path_ = parent / ("." + target.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(path_, ec);  // a leftover of a crashed run with the same pid
  if (!fs::create_directories(path_, ec) || ec) {
    throw IoError("cannot create temporary folder " + path_.string() + ": " + ec.message(),
                  "check that " + parent.string() + " exists and is writable");
  }
}

ScopedTempDir::~ScopedTempDir() {
  if (!owned_) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

bool exchange_paths(const fs::path& a, const fs::path& b) {
#if defined(RENAME_EXCHANGE)
  return ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0;
#else
  (void)a;
  (void)b;
  return false;
#endif
}

void ScopedTempDir::commit(const fs::path& final_path, bool replace) {
  fs::path target = final_path;
  if (target.filename().empty()) target = target.parent_path();
  std::error_code ec;
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  if (fs::exists(fs::symlink_status(target))) {
    if (!replace) throw IoError(target.string() + " already exists", "pass --overwrite");
    // One atomic step: a kill at any moment leaves the old or the new output at `target`.
    if (exchange_paths(path_, target)) {
      fsync_path(parent);
      fs::remove_all(path_, ec);  // now the old output
      owned_ = false;
      return;
    }
    // A file system without RENAME_EXCHANGE: move the old output aside first (a kill between
    // the two renames leaves it at <temp>.old).
    const fs::path old = path_.string() + ".old";
    fs::rename(target, old, ec);
    if (ec) throw IoError("cannot move " + target.string() + " aside: " + ec.message());
    fs::rename(path_, target, ec);
    if (ec) {
      std::error_code ignored;
      fs::rename(old, target, ignored);  // put the old output back
      throw IoError("cannot rename " + path_.string() + " to " + target.string() + ": " +
                    ec.message());
    }
    owned_ = false;
    fs::remove_all(old, ec);
    fsync_path(parent);
    return;
  }
  fs::rename(path_, target, ec);
  if (ec) {
    throw IoError("cannot rename " + path_.string() + " to " + target.string() + ": " +
                  ec.message());
  }
  owned_ = false;
  fsync_path(parent);
}

}  // namespace fer
