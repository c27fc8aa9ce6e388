// torchvision-style ImageFolder discovery for fer-pack (decoding: image/image_io.h).
//
// Layouts: (a) split folders train/ val/ (or validation/, valid/) test/ each holding class
// folders (val may be missing: fer-pack carves it from train); (b) class folders directly.
// Classes are the sorted class-folder names; images in sub-folders of a class folder belong to
// that class. Hidden entries (leading '.') and files without an image extension are ignored.
// Symlinks are followed, each real directory is visited once (no loops).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace fer::tools {

struct ImageFile {
  std::filesystem::path path;  // full path to read
  std::string id;              // "<class>/<relative path>" inside the split (raw bytes)
  int label = 0;               // index into classes
};

struct ImageFolderScan {
  bool has_splits = false;                 // layout (a)
  std::vector<std::string> classes;        // sorted names
  // Layout (a): "train", "val", "test" (present ones); layout (b): "all". Each sorted by id.
  std::map<std::string, std::vector<ImageFile>> splits;
  std::int64_t ignored_files = 0;          // non-image, hidden, or not regular files
};

// Scans SRC. Throws DataError when SRC is missing or not a folder, has no class folders, has
// split folders whose class sets differ (the message lists the difference), or has no images.
ImageFolderScan scan_image_folder(const std::filesystem::path& src);

}  // namespace fer::tools
