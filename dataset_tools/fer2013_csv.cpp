#include "fer2013_csv.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include "common/cancel.h"
#include "common/errors.h"
#include "common/logging.h"

// Records are physical lines, ended by LF or CRLF (a lone CR is not a line break). Values are
// trimmed of spaces and tabs. A quoted field may hold commas and "" (RFC 4180) but not a line
// break: a line that ends inside a quoted field is malformed, and its continuation line is judged
// on its own (and is malformed too, almost surely). Splitting on '\n' alone is what lets a stray
// quote cost one or two rows instead of swallowing the rest of the file, and it makes indexing a
// memchr() per line.

namespace fer::tools {
namespace {

// Bytes read per block while indexing (plus room for one partial record carried over).
constexpr std::size_t kBlockBytes = std::size_t{4} << 20;
// Malformed rows that get a warning of their own; the rest are counted in one closing line.
constexpr std::int64_t kMaxRowWarnings = 20;
// Longest field value quoted in an error message.
constexpr std::size_t kMaxQuotedValue = 40;
constexpr std::string_view kBom = "\xEF\xBB\xBF";

bool is_blank(char c) { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// ASCII case-insensitive equality (column names and Usage values are ASCII).
bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

// A value for an error message: quoted, cut to kMaxQuotedValue bytes.
std::string quote_value(std::string_view s) {
  if (s.size() <= kMaxQuotedValue) return fmt::format("'{}'", s);
  return fmt::format("'{}...'", s.substr(0, kMaxQuotedValue));
}

// Longest record the reader accepts. Bounds the indexing buffer (a file without line breaks
// must not be loaded whole) and keeps CsvRowRef::length in 32 bits. A valid row needs at most
// 4 bytes per pixel; 16 leaves room for generous padding.
std::size_t max_record_bytes(int pixels) {
  const std::uint64_t bytes = std::max<std::uint64_t>(
      std::uint64_t{1} << 20, std::uint64_t{16} * static_cast<std::uint64_t>(pixels) + (64 << 10));
  return static_cast<std::size_t>(
      std::min<std::uint64_t>(bytes, std::numeric_limits<std::uint32_t>::max() - 1));
}

// Splits [begin, end) (one line without its terminator) into fields, calling on_field(index,
// value) for each. Returns the number of fields, or -1 with `error` set for a malformed line.
// Blanks around a quoted field are tolerated; a quote inside an unquoted field is literal.
// A quoted field's value is the text between its quotes with any "" escapes left in: a quote is
// invalid in every column this reader interprets, so a value with an escape fails validation
// either way and nothing ever needs unescaping.
template <typename OnField>
int split_fields(const char* begin, const char* end, std::string* error, OnField&& on_field) {
  int index = 0;
  const char* p = begin;
  while (true) {
    const char* q = p;
    while (q < end && is_blank(*q)) ++q;
    if (q < end && *q == '"') {
      const char* value_begin = q + 1;
      const char* r = value_begin;
      while (true) {
        r = static_cast<const char*>(std::memchr(r, '"', static_cast<std::size_t>(end - r)));
        if (r == nullptr) {
          *error = fmt::format(
              "field {} has an unterminated quote (a quoted field may not span lines)", index + 1);
          return -1;
        }
        if (r + 1 < end && r[1] == '"') {
          r += 2;  // "" is an escaped quote
          continue;
        }
        break;
      }
      on_field(index, std::string_view(value_begin, static_cast<std::size_t>(r - value_begin)));
      ++index;
      p = r + 1;
      while (p < end && is_blank(*p)) ++p;
      if (p == end) return index;
      if (*p != ',') {
        *error = fmt::format("field {} has unexpected text after its closing quote", index);
        return -1;
      }
      ++p;
    } else {
      const char* comma =
          static_cast<const char*>(std::memchr(p, ',', static_cast<std::size_t>(end - p)));
      const char* field_end = comma != nullptr ? comma : end;
      on_field(index, std::string_view(p, static_cast<std::size_t>(field_end - p)));
      ++index;
      if (comma == nullptr) return index;
      p = comma + 1;
    }
  }
}

// Where the columns are; -1 = absent (or not checked, see parse_record).
struct Layout {
  int num_fields = -1;
  int emotion = -1;
  int pixels = -1;
  int usage = -1;
};

// Bytes after a field that parse_pixels() may read (never interpret). Every buffer a record is
// parsed from keeps this many readable bytes after the record.
constexpr std::size_t kReadSlack = 2;

unsigned digit_value(char c) { return static_cast<unsigned>(static_cast<unsigned char>(c) - '0'); }

// Parses space/tab-separated pixel values in [0, 255]. Writes the first `expected` values to
// `out` when it is not null. Returns an empty string on success, else the reason.
// May read (not use) kReadSlack bytes past text.end(): the hot path decodes up to three digits
// without a branch per digit, which is what makes indexing run at disk-cache speed.
std::string parse_pixels(std::string_view text, int expected, std::uint8_t* out) {
  const char* p = text.data();
  const char* const end = p + text.size();
  int count = 0;
  while (true) {
    while (p < end && is_blank(*p)) ++p;
    if (p >= end) break;
    const char* const token = p;
    const std::size_t available = static_cast<std::size_t>(end - p);
    const unsigned d0 = digit_value(p[0]);
    const unsigned d1 = digit_value(p[1]);
    const unsigned d2 = digit_value(p[2]);
    const unsigned two = static_cast<unsigned>(available > 1) & static_cast<unsigned>(d1 < 10u);
    const unsigned three =
        two & static_cast<unsigned>(available > 2) & static_cast<unsigned>(d2 < 10u);
    // Arithmetic instead of ?: so the compiler emits no branch on the (random) digit count.
    unsigned value = d0 * (1u + 9u * two) + (d1 & (0u - two));
    value = value * (1u + 9u * three) + (d2 & (0u - three));
    p += 1 + two + three;
    if (d0 >= 10u || (p < end && !is_blank(*p))) {
      // Rare: not a number, or four digits or more (too large, or leading zeros).
      p = token;
      value = 0;
      bool numeric = true;
      for (; p < end && !is_blank(*p); ++p) {
        const unsigned d = digit_value(*p);
        numeric = numeric && d < 10u;
        value = std::min(value * 10u + d, 100000u);  // saturates: only "too large" matters
      }
      const std::string_view token_text(token, static_cast<std::size_t>(p - token));
      if (!numeric) {
        return fmt::format("pixel {} is not a number: {}", count + 1, quote_value(token_text));
      }
    }
    if (value > 255u) {
      return fmt::format("pixel {} is {}, above 255", count + 1,
                         quote_value(std::string_view(token, static_cast<std::size_t>(p - token))));
    }
    if (out != nullptr && count < expected) out[count] = static_cast<std::uint8_t>(value);
    ++count;
  }
  if (count == 0) return "empty pixel list";
  if (count != expected) return fmt::format("row has {} pixels, expected {}", count, expected);
  return {};
}

std::string parse_label(std::string_view text, int num_classes, std::uint8_t* label) {
  const std::string_view s = trim(text);
  if (s.empty()) return "empty label";
  unsigned value = 0;
  for (const char c : s) {
    if (static_cast<unsigned>(c - '0') >= 10u) {
      return fmt::format("label {} is not a non-negative integer", quote_value(s));
    }
    value = std::min(value * 10u + static_cast<unsigned>(c - '0'), 100000u);
  }
  if (value >= static_cast<unsigned>(num_classes)) {
    return fmt::format("label {} is out of range [0, {})", s, num_classes);
  }
  *label = static_cast<std::uint8_t>(value);
  return {};
}

std::string parse_usage(std::string_view text, CsvUsage* usage) {
  static constexpr std::pair<std::string_view, CsvUsage> kUsages[] = {
      {"Training", CsvUsage::kTrain},
      {"PublicTest", CsvUsage::kVal},
      {"PrivateTest", CsvUsage::kTest},
  };
  const std::string_view s = trim(text);
  for (const auto& [name, value] : kUsages) {
    if (s == name) {
      *usage = value;
      return {};
    }
  }
  for (const auto& [name, value] : kUsages) {
    if (iequals(s, name)) {
      *usage = value;
      return {};
    }
  }
  return fmt::format("unknown Usage {} (expected Training, PublicTest or PrivateTest)",
                     quote_value(s));
}

struct Record {
  std::uint8_t label = 0;
  CsvUsage usage = CsvUsage::kNone;
};

// Validates one record (a line without its terminator) against `layout`; columns at -1 and
// num_fields -1 are not checked. Pixels go to `pixels_out` when it is not null (contents
// unspecified on failure). Returns an empty string on success, else the reason.
std::string parse_record(std::string_view line, const Layout& layout, const CsvOptions& options,
                         Record* record, std::uint8_t* pixels_out) {
  std::string error;
  std::string_view emotion, pixels, usage;
  const int num_fields = split_fields(line.data(), line.data() + line.size(), &error,
                                      [&](int index, std::string_view value) {
                                        if (index == layout.emotion) emotion = value;
                                        if (index == layout.pixels) pixels = value;
                                        if (index == layout.usage) usage = value;
                                      });
  if (num_fields < 0) return error;
  if (layout.num_fields >= 0 && num_fields != layout.num_fields) {
    return fmt::format("row has {} fields, expected {} as in the header", num_fields,
                       layout.num_fields);
  }
  if (num_fields <= layout.pixels) {
    return fmt::format("row has {} fields, the pixels are field {}", num_fields, layout.pixels + 1);
  }
  if (layout.emotion >= 0) {
    error = parse_label(emotion, options.num_classes, &record->label);
    if (!error.empty()) return error;
  }
  if (layout.usage >= 0) {
    error = parse_usage(usage, &record->usage);
    if (!error.empty()) return error;
  }
  return parse_pixels(pixels, options.pixels, pixels_out);
}

// Finds the emotion, pixels and Usage columns of a header line; throws DataError.
Layout parse_header(std::string_view line, const std::string& where) {
  static constexpr const char* kExpected =
      "expected a header row naming the columns emotion and pixels (and optionally Usage), in "
      "any order";
  Layout layout;
  std::string error;
  std::string duplicate;
  const auto claim = [&](int* column, int index, std::string_view name) {
    if (*column >= 0 && duplicate.empty()) {
      duplicate =
          fmt::format("column '{}' appears twice (fields {} and {})", name, *column + 1, index + 1);
    }
    *column = index;
  };
  const auto on_field = [&](int index, std::string_view value) {
    const std::string_view name = trim(value);
    if (iequals(name, "emotion")) {
      claim(&layout.emotion, index, name);
    } else if (iequals(name, "pixels")) {
      claim(&layout.pixels, index, name);
    } else if (iequals(name, "usage")) {
      claim(&layout.usage, index, name);
    }
  };
  layout.num_fields = split_fields(line.data(), line.data() + line.size(), &error, on_field);
  if (layout.num_fields < 0) {
    throw DataError(
        fmt::format("{}: cannot parse the header row ({}); {}", where, error, kExpected));
  }
  if (!duplicate.empty()) throw DataError(fmt::format("{}: header: {}", where, duplicate));
  if (layout.emotion < 0 || layout.pixels < 0) {
    throw DataError(fmt::format("{}: found header {}; {}", where, quote_value(line), kExpected),
                    "a fer2013.csv without a header row is not supported: add the line "
                    "'emotion,pixels,Usage'");
  }
  return layout;
}

// Reads until `size` bytes or end of file; returns the bytes read. Throws IoError.
std::size_t read_full(int fd, char* data, std::size_t size, const std::string& path) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, data + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

// Like read_full() at `offset`, without moving the file position (thread-safe).
std::size_t pread_full(int fd, char* data, std::size_t size, std::uint64_t offset,
                       const std::string& path) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, data + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

struct Index {
  Layout layout;
  std::vector<CsvRowRef> rows;
  std::int64_t skipped = 0;
};

// The single streaming pass: reads the file in blocks, hands every complete line to a
// LineIndexer, and carries a partial last line over to the next block.
class LineIndexer {
 public:
  LineIndexer(const std::string& path, const CsvOptions& options)
      : path_(path), options_(options), max_record_(max_record_bytes(options.pixels)) {}

  Index run(int fd) {
    // Room for one block after a carried-over partial record of at most max_record_ bytes.
    const std::size_t capacity = kBlockBytes + max_record_;
    std::vector<char> buffer(capacity + kReadSlack);
    char* const data = buffer.data();
    std::size_t have = 0;           // valid bytes in buffer
    std::uint64_t data_offset = 0;  // file offset of data[0]
    std::int64_t line = 1;          // line number of the next line to start
    bool first_block = true;
    bool eof = false;
    std::int64_t long_line = 0;  // > 0 while discarding an over-long line that started there
    while (!eof) {
      throw_if_cancelled();
      const std::size_t got = read_full(fd, data + have, capacity - have, path_);
      eof = have + got < capacity;
      have += got;
      std::size_t start = 0;
      if (first_block) {
        first_block = false;
        if (have >= kBom.size() && std::string_view(data, kBom.size()) == kBom) start = kBom.size();
      }
      while (const void* newline = std::memchr(data + start, '\n', have - start)) {
        const std::size_t end = static_cast<std::size_t>(static_cast<const char*>(newline) - data);
        if (long_line > 0) {
          reject(long_line, too_long());
          long_line = 0;
        } else {
          on_line(std::string_view(data + start, end - start), data_offset + start, line);
        }
        ++line;
        start = end + 1;
      }
      const std::size_t rest = have - start;
      if (eof) {
        if (long_line > 0) {
          reject(long_line, too_long());
        } else if (rest > 0) {
          on_line(std::string_view(data + start, rest), data_offset + start, line);
        }
        break;
      }
      if (long_line > 0 || rest > max_record_) {
        // No line break within max_record_ bytes: drop the line's bytes until its end appears.
        if (long_line == 0) long_line = line;
        data_offset += have;
        have = 0;
        continue;
      }
      std::memmove(data, data + start, rest);
      data_offset += start;
      have = rest;
    }
    if (!header_seen_) {
      throw DataError(
          fmt::format("{}: no header row (the file is empty or blank); expected a "
                      "header row naming the columns emotion and pixels (and "
                      "optionally Usage)",
                      path_));
    }
    if (index_.skipped > kMaxRowWarnings) {
      spdlog::warn("{}: {} more malformed row(s) skipped without a warning ({} skipped in total)",
                   path_, index_.skipped - kMaxRowWarnings, index_.skipped);
    }
    return std::move(index_);
  }

 private:
  std::string too_long() const { return fmt::format("line is longer than {} bytes", max_record_); }

  // `text` is one line without its '\n'; `offset` its byte offset in the file.
  void on_line(std::string_view text, std::uint64_t offset, std::int64_t line) {
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (trim(text).empty()) return;
    if (!header_seen_) {
      index_.layout = parse_header(text, fmt::format("{}:{}", path_, line));
      header_seen_ = true;
      return;
    }
    if (text.size() > max_record_) {
      reject(line, too_long());
      return;
    }
    Record record;
    std::string error = parse_record(text, index_.layout, options_, &record, nullptr);
    if (!error.empty()) {
      reject(line, error);
      return;
    }
    CsvRowRef row;
    row.line = line;
    row.offset = offset;
    row.length = static_cast<std::uint32_t>(text.size());
    row.label = record.label;
    row.usage = record.usage;
    index_.rows.push_back(row);
  }

  void reject(std::int64_t line, const std::string& reason) {
    if (options_.strict) {
      throw DataError(fmt::format("{}:{}: {}", path_, line, reason),
                      "fix the row, or run without strict mode to skip malformed rows");
    }
    ++index_.skipped;
    if (index_.skipped <= kMaxRowWarnings) {
      spdlog::warn("{}:{}: skipped malformed row: {}", path_, line, reason);
    }
  }

  const std::string& path_;
  const CsvOptions& options_;
  const std::size_t max_record_;
  bool header_seen_ = false;
  Index index_;
};

// Closes a descriptor unless released; keeps the constructor from leaking it when it throws.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

}  // namespace

const std::vector<std::string>& fer2013_class_names() {
  static const std::vector<std::string> kNames = {"Angry", "Disgust",  "Fear",   "Happy",
                                                  "Sad",   "Surprise", "Neutral"};
  return kNames;
}

Fer2013Csv::Fer2013Csv(const std::filesystem::path& path, const CsvOptions& options)
    : path_(path), options_(options) {
  if (options.pixels <= 0 || options.num_classes <= 0 || options.num_classes > 256) {
    throw ConfigError(
        fmt::format("CSV options: pixels must be > 0 and num_classes in [1, 256], "
                    "got pixels={} num_classes={}",
                    options.pixels, options.num_classes));
  }
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    throw IoError(fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
  }
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  Index index = LineIndexer(path_.string(), options_).run(fd.get());
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_NORMAL);
  has_usage_ = index.layout.usage >= 0;
  pixels_column_ = index.layout.pixels;
  rows_ = std::move(index.rows);
  skipped_ = index.skipped;
  fd_ = fd.release();
}

Fer2013Csv::~Fer2013Csv() {
  if (fd_ >= 0) ::close(fd_);
}

void Fer2013Csv::read_pixels(const CsvRowRef& row, std::uint8_t* out) const {
  const std::string path = path_.string();
  const auto changed = [&](const std::string& reason) {
    return DataError(fmt::format("{}:{}: {}", path, row.line, reason),
                     "the file changed since it was indexed; index it again");
  };
  if (row.offset == 0 || row.length == 0 || row.length > max_record_bytes(options_.pixels)) {
    throw changed(
        fmt::format("not an indexed record (offset {}, {} bytes)", row.offset, row.length));
  }
  // Read one byte either side as well: a record starts after a '\n' (the header precedes it) and
  // ends at '\r', '\n' or the end of the file. This catches most records that moved.
  const std::size_t wanted = std::size_t{row.length} + 2;
  std::string buffer(wanted + kReadSlack, '\0');
  const std::size_t got = pread_full(fd_, buffer.data(), wanted, row.offset - 1, path);
  if (got < wanted - 1) {
    throw changed(fmt::format("record ends past the end of the file ({} of {} bytes read)",
                              got > 0 ? got - 1 : 0, row.length));
  }
  if (buffer.front() != '\n' ||
      (got == wanted && buffer[wanted - 1] != '\n' && buffer[wanted - 1] != '\r')) {
    throw changed("the record is no longer a whole line at its indexed offset");
  }
  Layout layout;
  layout.pixels = pixels_column_;
  Record record;
  const std::string error =
      parse_record(std::string_view(buffer.data() + 1, row.length), layout, options_, &record, out);
  if (!error.empty()) throw changed("the record no longer parses: " + error);
}

}  // namespace fer::tools
