#include "image_folder.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <iterator>
#include <set>
#include <system_error>
#include <utility>

#include "common/errors.h"
#include "common/logging.h"
#include "image/image_io.h"

namespace fer::tools {
namespace {

namespace fs = std::filesystem;

// Top-level folder names that make SRC a split layout, and the split each one maps to.
// Case-sensitive, as torchvision-style datasets spell them.
constexpr std::array<std::pair<const char*, const char*>, 5> kSplitFolders = {{
    {"train", "train"},
    {"val", "val"},
    {"validation", "val"},
    {"valid", "val"},
    {"test", "test"},
}};

// The layout help shown with "no class folders" and similar errors.
constexpr const char* kLayoutHint =
    "expected SRC/<class>/<image> or SRC/{train,val,test}/<class>/<image> "
    "(val may also be named validation/ or valid/)";

bool is_hidden(const std::string& name) { return !name.empty() && name[0] == '.'; }

// strerror text for errno value `err`; thread-safe (unlike strerror()).
std::string errno_text(int err) { return std::generic_category().message(err); }

// Identity of a real directory, so that symlinks cannot make us visit one twice.
using DirKey = std::pair<dev_t, ino_t>;

// One directory entry after following symlinks. `ok` is false when stat() failed (dangling
// symlink, permission error); then `err` holds errno.
struct EntryInfo {
  std::string name;  // raw bytes of the file name
  fs::path path;
  bool ok = false;
  int err = 0;
  struct stat st {};
};

// Lists `dir` (not recursive), stat()ing each entry with symlinks followed. Returns false and sets
// *error when the directory cannot be opened or read; never throws filesystem_error. The result
// is sorted by name so that warnings and traversal are deterministic.
bool list_dir(const fs::path& dir, std::vector<EntryInfo>* entries, std::string* error) {
  entries->clear();
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  const fs::directory_iterator end;
  for (; !ec && it != end; it.increment(ec)) {
    EntryInfo e;
    e.path = it->path();
    e.name = e.path.filename().native();
    if (::stat(e.path.c_str(), &e.st) == 0) {
      e.ok = true;
    } else {
      e.err = errno;
    }
    entries->push_back(std::move(e));
  }
  if (ec) {
    *error = ec.message();
    return false;
  }
  std::sort(entries->begin(), entries->end(),
            [](const EntryInfo& a, const EntryInfo& b) { return a.name < b.name; });
  return true;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out = "[";
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ", ";
    out += names[i];
  }
  return out + "]";
}

// State of one whole scan: the directories already visited (across all splits, so a folder that
// is reachable twice is read once) and the running count of ignored entries.
struct ScanState {
  std::set<DirKey> visited;
  std::int64_t ignored = 0;
};

// Marks `st` (a directory) visited; false when it already was.
bool visit_once(const struct stat& st, ScanState* state) {
  return state->visited.insert(DirKey(st.st_dev, st.st_ino)).second;
}

// Collects the images under class folder `dir` (recursively) into *out with ids
// "<id_prefix>/<name>..." and `label`. Unreadable folders are warned about and skipped.
void collect_images(const fs::path& dir, const std::string& id_prefix, int label, ScanState* state,
                    std::vector<ImageFile>* out) {
  std::vector<EntryInfo> entries;
  std::string error;
  if (!list_dir(dir, &entries, &error)) {
    spdlog::warn("skipping unreadable folder {}: {}", dir.string(), error);
    return;
  }
  for (EntryInfo& e : entries) {
    if (is_hidden(e.name)) {
      ++state->ignored;
      continue;
    }
    const std::string id = id_prefix + "/" + e.name;
    if (e.ok && S_ISDIR(e.st.st_mode)) {
      if (!visit_once(e.st, state)) {
        spdlog::warn("skipping {}: folder already scanned (symlink loop or duplicate link)",
                     e.path.string());
        continue;
      }
      collect_images(e.path, id, label, state, out);
      continue;
    }
    const bool image_name = has_image_extension(e.path);
    if (!image_name) {
      ++state->ignored;
      continue;
    }
    if (!e.ok || !S_ISREG(e.st.st_mode)) {
      // Dangling symlinks, FIFOs, sockets, devices: never opened (a FIFO would block).
      ++state->ignored;
      spdlog::warn("ignoring {}: {}", e.path.string(),
                   e.ok ? "not a regular file" : errno_text(e.err));
      continue;
    }
    out->push_back(ImageFile{std::move(e.path), id, label});
  }
}

// The non-hidden sub-folders of `dir` (symlinks followed), sorted byte-wise. Counts other entries
// as ignored. Throws DataError when `dir` cannot be read: without it the classes are unknown.
std::vector<EntryInfo> class_folders(const fs::path& dir, ScanState* state) {
  std::vector<EntryInfo> entries;
  std::string error;
  if (!list_dir(dir, &entries, &error)) {
    throw DataError(detail::concat("cannot read folder ", dir.string(), ": ", error),
                    "check that the folder exists and is readable");
  }
  std::vector<EntryInfo> folders;
  for (EntryInfo& e : entries) {
    if (!is_hidden(e.name) && e.ok && S_ISDIR(e.st.st_mode)) {
      folders.push_back(std::move(e));
    } else {
      ++state->ignored;
    }
  }
  return folders;
}

// "a has [x, y] that b lacks" for the names in `a` but not in `b` (both sorted); empty if none.
std::string describe_missing(const std::string& a_name, const std::vector<std::string>& a,
                             const std::string& b_name, const std::vector<std::string>& b) {
  std::vector<std::string> only_a;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(only_a));
  if (only_a.empty()) return {};
  return detail::concat(a_name, " has ", join_names(only_a), " that ", b_name, " lacks");
}

}  // namespace

ImageFolderScan scan_image_folder(const fs::path& src) {
  struct stat src_st {};
  if (::stat(src.c_str(), &src_st) != 0) {
    const int err = errno;
    throw DataError(detail::concat("image folder ", src.string(), ": ", errno_text(err)),
                    kLayoutHint);
  }
  if (!S_ISDIR(src_st.st_mode)) {
    throw DataError(detail::concat("image folder ", src.string(), " is not a folder"), kLayoutHint);
  }

  ScanState state;
  visit_once(src_st, &state);
  ImageFolderScan scan;

  // Split folders are recognised only directly inside SRC.
  std::vector<EntryInfo> top = class_folders(src, &state);
  std::map<std::string, EntryInfo> split_dirs;           // split name -> folder
  std::map<std::string, std::string> split_folder_name;  // split name -> folder name used
  for (const EntryInfo& e : top) {
    for (const auto& [folder, split] : kSplitFolders) {
      if (e.name != folder) continue;
      auto [it, inserted] = split_folder_name.emplace(split, e.name);
      if (!inserted) {
        throw DataError(detail::concat("image folder ", src.string(), " has both ", it->second,
                                       "/ and ", e.name, "/"),
                        "keep one validation folder (val/, validation/ or valid/)");
      }
      split_dirs.emplace(split, e);
    }
  }

  std::map<std::string, std::vector<EntryInfo>> split_classes;  // split -> its class folders
  if (split_dirs.empty()) {
    split_classes.emplace("all", std::move(top));
  } else {
    scan.has_splits = true;
    if (split_dirs.count("train") == 0) {
      throw DataError(
          detail::concat("image folder ", src.string(), " has split folders but no train/"),
          kLayoutHint);
    }
    for (const EntryInfo& e : top) {
      bool is_split = false;
      for (const auto& [folder, split] : kSplitFolders) is_split = is_split || e.name == folder;
      if (!is_split) {
        spdlog::warn("ignoring folder {}: not a split folder (train/, val/, test/)",
                     e.path.string());
      }
    }
    for (auto& [split, dir] : split_dirs) {
      visit_once(dir.st, &state);
      split_classes.emplace(split, class_folders(dir.path, &state));
    }
  }

  // Class sets: every present split must have the same one.
  std::map<std::string, std::vector<std::string>> names;
  for (const auto& [split, folders] : split_classes) {
    std::vector<std::string>& split_names = names[split];  // present even when empty
    for (const EntryInfo& e : folders) split_names.push_back(e.name);
  }
  const std::string first = scan.has_splits ? "train" : "all";
  scan.classes = names[first];
  for (const auto& [split, split_names] : names) {
    if (split_names == scan.classes) continue;
    std::string message = "class folders differ between splits: ";
    const std::string a = describe_missing(first, scan.classes, split, split_names);
    const std::string b = describe_missing(split, split_names, first, scan.classes);
    message += a;
    if (!a.empty() && !b.empty()) message += "; ";
    message += b;
    throw DataError(message, "every split folder must hold the same class folders");
  }
  if (scan.classes.empty()) {
    throw DataError(detail::concat("no class folders in ", src.string()), kLayoutHint);
  }

  // Images. An empty class folder still counts as a class (torchvision's ImageFolder would raise
  // instead); fer-pack reports its zero count so the user sees it.
  // Splits are walked train first, so that a folder linked into several splits (each real folder
  // is read once) lands in train.
  std::int64_t total = 0;
  for (const char* split : {"all", "train", "val", "test"}) {
    const auto found = split_classes.find(split);
    if (found == split_classes.end()) continue;
    std::vector<EntryInfo>& folders = found->second;
    std::vector<ImageFile>& files = scan.splits[split];
    for (std::size_t label = 0; label < folders.size(); ++label) {
      EntryInfo& folder = folders[label];
      if (!visit_once(folder.st, &state)) {
        spdlog::warn("skipping {}: folder already scanned (symlink loop or duplicate link)",
                     folder.path.string());
        continue;
      }
      collect_images(folder.path, folder.name, static_cast<int>(label), &state, &files);
    }
    std::sort(files.begin(), files.end(),
              [](const ImageFile& a, const ImageFile& b) { return a.id < b.id; });
    total += static_cast<std::int64_t>(files.size());
  }
  scan.ignored_files = state.ignored;
  if (total == 0) {
    throw DataError(detail::concat("no images found in ", src.string()),
                    "images need one of the extensions jpg, jpeg, png, bmp, webp, tif, tiff, "
                    "pgm, ppm; " +
                        std::string(kLayoutHint));
  }
  for (const auto& [split, files] : scan.splits) {
    if (files.empty()) {
      throw DataError(detail::concat("split ", split, " of ", src.string(), " has no images"),
                      "remove the empty split folder or add images to it");
    }
  }
  return scan;
}

}  // namespace fer::tools
