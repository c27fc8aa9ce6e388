#include "image_folder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <exception>
#include <iterator>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <system_error>
#include <utility>

#include "common/errors.h"
#include "common/logging.h"

namespace fer::tools {
namespace {

namespace fs = std::filesystem;

// Lower-case extensions (without the dot) that count as images.
constexpr std::array<const char*, 9> kImageExtensions = {"jpg", "jpeg", "png", "bmp", "webp",
                                                         "tif", "tiff", "pgm", "ppm"};

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

// cv::IMREAD_UNCHANGED keeps 16-bit depth and the alpha channel, which we then reduce ourselves
// with documented rules. (It is -1, so OR-ing IMREAD_ANYDEPTH|IMREAD_ANYCOLOR into it changes
// nothing; they are written out to state the intent.) It also ignores EXIF orientation: that is
// acceptable and matches torchvision's PIL loader, which does not apply exif_transpose either.
constexpr int kDecodeFlags = cv::IMREAD_UNCHANGED | cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR;

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

// Converts any OpenCV depth to CV_8U: 16-bit is scaled by 1/257 (65535 -> 255, rounded), float is
// taken to be in [0,1]; other depths are saturated as they are.
cv::Mat to_8bit(const cv::Mat& image) {
  cv::Mat out;
  switch (image.depth()) {
    case CV_8U:
      return image;
    case CV_16U:
      image.convertTo(out, CV_8U, 1.0 / 257.0);
      return out;
    case CV_32F:
    case CV_64F:
      image.convertTo(out, CV_8U, 255.0);
      return out;
    default:
      image.convertTo(out, CV_8U);
      return out;
  }
}

// Reduces an 8-bit image with 1..4 channels (gray, gray+alpha, BGR, BGRA) to `channels`
// (1: gray with the ITU-R 601 weights PIL's "L" uses, 3: RGB). Alpha is dropped, not composited,
// as PIL's convert("RGB") does. Returns an empty Mat for other channel counts.
cv::Mat to_channels(const cv::Mat& image, int channels) {
  cv::Mat out;
  switch (image.channels()) {
    case 1:
      if (channels == 1) return image;
      cv::cvtColor(image, out, cv::COLOR_GRAY2RGB);
      return out;
    case 2: {
      cv::Mat gray;
      cv::extractChannel(image, gray, 0);
      return to_channels(gray, channels);
    }
    case 3:
      cv::cvtColor(image, out, channels == 1 ? cv::COLOR_BGR2GRAY : cv::COLOR_BGR2RGB);
      return out;
    case 4:
      cv::cvtColor(image, out, channels == 1 ? cv::COLOR_BGRA2GRAY : cv::COLOR_BGRA2RGB);
      return out;
    default:
      return out;
  }
}

}  // namespace

bool has_image_extension(const fs::path& path) {
  std::string ext = path.extension().native();
  if (ext.size() < 2) return false;
  ext.erase(0, 1);  // the dot
  for (char& c : ext) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return std::find_if(kImageExtensions.begin(), kImageExtensions.end(),
                      [&](const char* known) { return ext == known; }) != kImageExtensions.end();
}

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

bool decode_image_bytes(const std::vector<std::uint8_t>& bytes, int size, int channels,
                        std::uint8_t* out, std::string* reason) {
  std::string unused;
  if (reason == nullptr) reason = &unused;
  if (size <= 0 || (channels != 1 && channels != 3) || out == nullptr) {
    *reason = detail::concat("invalid decode arguments: size ", size, ", channels ", channels);
    return false;
  }
  if (bytes.empty()) {
    *reason = "empty file";
    return false;
  }
  if (bytes.size() > static_cast<std::size_t>(INT_MAX)) {
    *reason = "file too large to decode";
    return false;
  }
  const cv::Mat image = decode_to_channels(bytes.data(), bytes.size(), channels, reason);
  if (image.empty()) return false;
  try {
    const cv::Mat sized = resize_like_pack(image, size, size);
    const std::size_t row_bytes = static_cast<std::size_t>(size) * channels;
    for (int y = 0; y < size; ++y) {
      std::memcpy(out + y * row_bytes, sized.ptr<std::uint8_t>(y), row_bytes);
    }
    return true;
  } catch (const cv::Exception& e) {
    *reason = e.what();
    return false;
  } catch (const std::exception& e) {
    *reason = detail::concat("decode failed: ", e.what());
    return false;
  }
}

cv::Mat decode_to_channels(const std::uint8_t* bytes, std::size_t size, int channels,
                           std::string* reason) {
  std::string unused;
  if (reason == nullptr) reason = &unused;
  if (size == 0) {
    *reason = "empty file";
    return {};
  }
  if (size > static_cast<std::size_t>(INT_MAX)) {
    *reason = "file too large to decode";
    return {};
  }
  try {
    // imdecode only reads the buffer; the const_cast is what wrapping it without a copy needs.
    const cv::Mat raw(1, static_cast<int>(size), CV_8UC1, const_cast<std::uint8_t*>(bytes));
    const cv::Mat decoded = cv::imdecode(raw, kDecodeFlags);
    if (decoded.empty()) {
      *reason = "not a decodable image (truncated or not an image)";
      return {};
    }
    // CMYK JPEGs already arrive as 3-channel BGR: OpenCV's JPEG decoder converts them.
    cv::Mat image = to_channels(to_8bit(decoded), channels);
    if (image.empty()) *reason = detail::concat("unsupported channel count ", decoded.channels());
    return image;
  } catch (const cv::Exception& e) {
    *reason = e.what();
    return {};
  } catch (const std::exception& e) {
    // bad_alloc for absurd dimensions and the like: still bad data, not a bug.
    *reason = detail::concat("decode failed: ", e.what());
    return {};
  }
}

cv::Mat resize_like_pack(const cv::Mat& image, int width, int height) {
  if (image.cols == width && image.rows == height) return image;
  // Area averaging avoids aliasing when shrinking; it needs no enlargement in either dimension
  // (a 96x48 -> 48x48 resize is a pure shrink along x and uses it too).
  const bool shrink = image.cols >= width && image.rows >= height;
  cv::Mat resized;
  cv::resize(image, resized, cv::Size(width, height), 0, 0,
             shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
  return resized;
}

bool decode_image_file(const fs::path& path, int size, int channels, std::uint8_t* out,
                       std::string* reason) {
  std::string unused;
  if (reason == nullptr) reason = &unused;
  // O_NONBLOCK: opening a FIFO must not wait for a writer; fstat() then rejects it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    *reason = "cannot read: " + errno_text(errno);
    return false;
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    *reason = "cannot read: " + errno_text(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *reason = "cannot read: " +
              (S_ISDIR(st.st_mode) ? errno_text(EISDIR) : std::string("not a regular file"));
    return false;
  }
  // Sized from fstat() plus one byte so that end-of-file is seen without growing; grown anyway
  // if the file gets longer while it is read.
  std::vector<std::uint8_t> bytes;
  std::size_t used = 0;
  try {
    bytes.resize(static_cast<std::size_t>(std::max<off_t>(st.st_size, 0)) + 1);
    for (;;) {
      if (used == bytes.size()) bytes.resize(bytes.size() * 2);
      const ssize_t n = ::read(fd, bytes.data() + used, bytes.size() - used);
      if (n < 0) {
        if (errno == EINTR) continue;
        *reason = "cannot read: " + errno_text(errno);
        return false;
      }
      if (n == 0) break;
      used += static_cast<std::size_t>(n);
    }
  } catch (const std::exception&) {
    *reason = "cannot read: file too large";
    return false;
  }
  bytes.resize(used);
  return decode_image_bytes(bytes, size, channels, out, reason);
}

}  // namespace fer::tools
