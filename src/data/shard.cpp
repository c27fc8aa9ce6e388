#include "data/shard.h"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstring>

#include "common/errors.h"
#include "data/hdf5_util.h"
#include "data/manifest.h"

namespace fer {
namespace {

constexpr const char* kImages = "images";
constexpr const char* kLabels = "labels";
constexpr const char* kIds = "ids";
constexpr hsize_t kMaxVectorChunk = 4096;                        // labels/ids per chunk, at most
constexpr std::int64_t kMaxShardImages = std::int64_t{1} << 32;  // the manifest's split limit
constexpr hsize_t kMaxReadChunkImages = 4096;  // chunk_images() reported to readers, at most

// Object-creation property list that records no timestamps, so equal inputs give equal bytes.
h5::PropList untimed(hid_t cls) {
  h5::PropList plist(FER_H5_CHECK(H5Pcreate(cls), IoError, "HDF5"));
  FER_H5_CHECK(H5Pset_obj_track_times(plist.get(), false), IoError, "HDF5");
  return plist;
}

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  h5::Datatype type(FER_H5_CHECK(H5Tcopy(H5T_C_S1), IoError, "HDF5"));
  FER_H5_CHECK(H5Tset_size(type.get(), std::max<std::size_t>(1, value.size())), IoError, "HDF5");
  FER_H5_CHECK(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), IoError, "HDF5");
  h5::Dataspace space(FER_H5_CHECK(H5Screate(H5S_SCALAR), IoError, "HDF5"));
  h5::Attribute attr(FER_H5_CHECK(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT,
                                             H5P_DEFAULT),
                                  IoError, name));
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  FER_H5_CHECK(H5Awrite(attr.get(), type.get(), padded.data()), IoError, name);
}

void write_int_attr(hid_t obj, const char* name, long long value) {
  h5::Dataspace space(FER_H5_CHECK(H5Screate(H5S_SCALAR), IoError, "HDF5"));
  h5::Attribute attr(FER_H5_CHECK(
      H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), IoError, name));
  FER_H5_CHECK(H5Awrite(attr.get(), H5T_NATIVE_LLONG, &value), IoError, name);
}

h5::Dataset create_extendible(hid_t file, const char* name, hid_t type,
                              const std::vector<hsize_t>& item_dims, hsize_t chunk_items,
                              int compress_level) {
  std::vector<hsize_t> dims{0}, max_dims{H5S_UNLIMITED}, chunk{chunk_items};
  for (hsize_t d : item_dims) {
    dims.push_back(d);
    max_dims.push_back(d);
    chunk.push_back(d);
  }
  h5::Dataspace space(FER_H5_CHECK(
      H5Screate_simple(static_cast<int>(dims.size()), dims.data(), max_dims.data()), IoError,
      name));
  h5::PropList dcpl = untimed(H5P_DATASET_CREATE);
  FER_H5_CHECK(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), IoError,
               name);
  if (compress_level > 0) {
    FER_H5_CHECK(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(compress_level)), IoError,
                 name);
  }
  return h5::Dataset(FER_H5_CHECK(
      H5Dcreate2(file, name, type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), IoError,
      name));
}

// Grows dataset `ds` along dim 0 to `new_rows` and writes `rows` items at `start` from `data`.
void append_rows(hid_t ds, hid_t mem_type, hsize_t start, hsize_t rows, const void* data,
                 const char* what) {
  h5::Dataspace old_space(FER_H5_CHECK(H5Dget_space(ds), IoError, what));
  const int rank = FER_H5_CHECK(H5Sget_simple_extent_ndims(old_space.get()), IoError, what);
  std::vector<hsize_t> dims(rank);
  FER_H5_CHECK(H5Sget_simple_extent_dims(old_space.get(), dims.data(), nullptr), IoError, what);
  dims[0] = start + rows;
  FER_H5_CHECK(H5Dset_extent(ds, dims.data()), IoError, what);
  h5::Dataspace file_space(FER_H5_CHECK(H5Dget_space(ds), IoError, what));
  std::vector<hsize_t> offset(rank, 0), count = dims;
  offset[0] = start;
  count[0] = rows;
  FER_H5_CHECK(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, offset.data(), nullptr,
                                   count.data(), nullptr),
               IoError, what);
  h5::Dataspace mem_space(FER_H5_CHECK(H5Screate_simple(rank, count.data(), nullptr), IoError,
                                       what));
  FER_H5_CHECK(H5Dwrite(ds, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, data),
               IoError, what);
}

h5::Datatype vlen_string_type() {
  h5::Datatype type(FER_H5_CHECK(H5Tcopy(H5T_C_S1), IoError, "HDF5"));
  FER_H5_CHECK(H5Tset_size(type.get(), H5T_VARIABLE), IoError, "HDF5");
  return type;
}

}  // namespace

std::string shard_file_name(const std::string& split, int shard_index, int num_shards) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "-%05d-of-%05d.h5", shard_index, num_shards);
  return split + buf;
}

// ---------------------------------------------------------------------------------------------
// Writer

struct ShardWriter::Impl {
  h5::File file;
  h5::Dataset images, labels, ids;
  h5::Datatype id_type;
};

ShardWriter::ShardWriter(const std::filesystem::path& path, const ShardLayout& layout,
                         int compress_level, int chunk_images)
    : impl_(std::make_unique<Impl>()), path_(path), layout_(layout), chunk_images_(chunk_images) {
  h5::silence_errors();
  const std::string what = "writing " + path.string();
  FER_CHECK(chunk_images > 0 && compress_level >= 0 && compress_level <= 9, ConfigError,
            "bad shard options: chunk_images ", chunk_images, ", compress ", compress_level);
  h5::PropList fcpl = untimed(H5P_FILE_CREATE);
  impl_->file = h5::File(FER_H5_CHECK(
      H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT), IoError, what));
  const hid_t root = impl_->file.get();
  write_string_attr(root, "format", kDatasetFormat);
  write_int_attr(root, "version", kDatasetVersion);
  write_string_attr(root, "split", layout.split);
  write_int_attr(root, "shard_index", layout.shard_index);
  write_int_attr(root, "num_shards", layout.num_shards);
  const std::vector<hsize_t> image_dims{hsize_t(layout.height), hsize_t(layout.width),
                                        hsize_t(layout.channels)};
  impl_->images = create_extendible(root, kImages, H5T_STD_U8LE, image_dims,
                                    hsize_t(chunk_images), compress_level);
  const hsize_t vector_chunk = std::min<hsize_t>(kMaxVectorChunk, hsize_t(chunk_images) * 16);
  impl_->labels = create_extendible(root, kLabels, H5T_STD_U8LE, {}, vector_chunk, 0);
  impl_->id_type = vlen_string_type();
  impl_->ids = create_extendible(root, kIds, impl_->id_type.get(), {}, vector_chunk, 0);
  image_buffer_.reserve(std::size_t(chunk_images) * layout.height * layout.width *
                        layout.channels);
}

ShardWriter::~ShardWriter() = default;  // handles close themselves; an unclosed file is garbage

void ShardWriter::append(const std::uint8_t* image, std::uint8_t label, const std::string& id) {
  const std::size_t bytes = std::size_t(layout_.height) * layout_.width * layout_.channels;
  image_buffer_.insert(image_buffer_.end(), image, image + bytes);
  label_buffer_.push_back(label);
  id_buffer_.push_back(id);
  ++count_;
  if (label_buffer_.size() == static_cast<std::size_t>(chunk_images_)) flush_buffer();
}

void ShardWriter::flush_buffer() {
  if (label_buffer_.empty()) return;
  const hsize_t rows = label_buffer_.size();
  const hsize_t start = hsize_t(count_) - rows;
  const std::string what = "writing " + path_.string();
  append_rows(impl_->images.get(), H5T_NATIVE_UINT8, start, rows, image_buffer_.data(),
              what.c_str());
  append_rows(impl_->labels.get(), H5T_NATIVE_UINT8, start, rows, label_buffer_.data(),
              what.c_str());
  std::vector<const char*> id_ptrs;
  id_ptrs.reserve(rows);
  for (const auto& id : id_buffer_) id_ptrs.push_back(id.c_str());
  append_rows(impl_->ids.get(), impl_->id_type.get(), start, rows, id_ptrs.data(), what.c_str());
  image_buffer_.clear();
  label_buffer_.clear();
  id_buffer_.clear();
}

void ShardWriter::close() {
  if (!impl_->file.valid()) return;
  flush_buffer();
  impl_->images.reset();
  impl_->labels.reset();
  impl_->ids.reset();
  impl_->id_type.reset();
  if (!impl_->file.reset()) {
    throw IoError("cannot finish writing " + path_.string() + ": " + h5::last_error_message(),
                  "is the disk full?");
  }
}

// ---------------------------------------------------------------------------------------------
// Reader

struct ShardReader::Impl {
  h5::File file;
  h5::Dataset images, labels, ids;
  std::vector<hsize_t> image_dims;
};

namespace {

std::string read_string_attr(hid_t obj, const char* name, const std::string& file) {
  if (H5Aexists(obj, name) <= 0) throw DataError(file + ": missing attribute '" + name + "'");
  h5::Attribute attr(FER_H5_CHECK(H5Aopen(obj, name, H5P_DEFAULT), DataError, file));
  h5::Datatype type(FER_H5_CHECK(H5Aget_type(attr.get()), DataError, file));
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0) {
    throw DataError(file + ": attribute '" + name + "' is not a fixed-length string");
  }
  const std::size_t size = H5Tget_size(type.get());
  if (size == 0 || size > 4096) throw DataError(file + ": attribute '" + name + "' is too long");
  std::string value(size, '\0');
  FER_H5_CHECK(H5Aread(attr.get(), type.get(), value.data()), DataError, file);
  value.resize(std::strlen(value.c_str()));
  return value;
}

long long read_int_attr(hid_t obj, const char* name, const std::string& file) {
  if (H5Aexists(obj, name) <= 0) throw DataError(file + ": missing attribute '" + name + "'");
  h5::Attribute attr(FER_H5_CHECK(H5Aopen(obj, name, H5P_DEFAULT), DataError, file));
  h5::Datatype type(FER_H5_CHECK(H5Aget_type(attr.get()), DataError, file));
  if (H5Tget_class(type.get()) != H5T_INTEGER) {
    throw DataError(file + ": attribute '" + name + "' is not an integer");
  }
  long long value = 0;
  FER_H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_LLONG, &value), DataError, file);
  return value;
}

h5::Dataset open_dataset(hid_t file, const char* name, const std::string& path,
                         std::vector<hsize_t>* dims) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) {
    throw DataError(path + ": missing dataset /" + name);
  }
  h5::Dataset ds(FER_H5_CHECK(H5Dopen2(file, name, H5P_DEFAULT), DataError, path));
  h5::Dataspace space(FER_H5_CHECK(H5Dget_space(ds.get()), DataError, path));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 1 || rank > 4) throw DataError(path + ": dataset /" + name + " has rank " +
                                            std::to_string(rank));
  dims->assign(rank, 0);
  FER_H5_CHECK(H5Sget_simple_extent_dims(space.get(), dims->data(), nullptr), DataError, path);
  return ds;
}

// Reads rows [start, start+n) of a dataset whose row shape is dims[1:].
void read_rows(hid_t ds, hid_t mem_type, const std::vector<hsize_t>& dims, std::int64_t start,
               std::int64_t n, void* out, const std::string& path) {
  FER_CHECK(start >= 0 && n >= 0 && hsize_t(start + n) <= dims[0], DataError, path,
            ": read of rows [", start, ", ", start + n, ") beyond ", dims[0]);
  if (n == 0) return;
  h5::Dataspace file_space(FER_H5_CHECK(H5Dget_space(ds), DataError, path));
  std::vector<hsize_t> offset(dims.size(), 0), count = dims;
  offset[0] = hsize_t(start);
  count[0] = hsize_t(n);
  FER_H5_CHECK(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, offset.data(), nullptr,
                                   count.data(), nullptr),
               DataError, path);
  h5::Dataspace mem_space(FER_H5_CHECK(
      H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), DataError, path));
  FER_H5_CHECK(H5Dread(ds, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, out),
               DataError, path);
}

}  // namespace

ShardReader::ShardReader(const std::filesystem::path& path, const ShardExpectation& expect)
    : impl_(std::make_unique<Impl>()), path_(path), num_classes_(expect.num_classes) {
  h5::silence_errors();
  const std::string name = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw DataError("shard " + name + " is missing", "re-pack the dataset or restore the file");
  }
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file < 0) {
    throw DataError("shard " + name + " is not a readable HDF5 file (" +
                        h5::last_error_message() + ")",
                    "the file is corrupt or truncated: run `fer-pack verify` and re-pack");
  }
  impl_->file = h5::File(file);
  validate(expect);
}

ShardReader::ShardReader(const std::string& name, const void* image, std::size_t size,
                         const ShardExpectation& expect)
    : impl_(std::make_unique<Impl>()), path_(name), num_classes_(expect.num_classes) {
  h5::silence_errors();
  // The core driver serves the file from memory; HDF5 copies the image, and nothing touches disk.
  h5::PropList fapl(FER_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS), IoError, "HDF5"));
  FER_H5_CHECK(H5Pset_fapl_core(fapl.get(), 1 << 16, /*backing_store=*/false), IoError, "HDF5");
  if (size > 0) {
    FER_H5_CHECK(H5Pset_file_image(fapl.get(), const_cast<void*>(image), size), IoError, "HDF5");
  }
  const hid_t file = H5Fopen(name.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (file < 0) {
    throw DataError("shard " + name + " is not a readable HDF5 image (" + h5::last_error_message() +
                    ")");
  }
  impl_->file = h5::File(file);
  validate(expect);
}

void ShardReader::validate(const ShardExpectation& expect) {
  const hid_t file = impl_->file.get();
  const std::string name = path_.string();
  const auto format = read_string_attr(file, "format", name);
  if (format != kDatasetFormat) {
    throw DataError(name + ": format attribute is '" + format + "', expected '" +
                    kDatasetFormat + "'");
  }
  const long long version = read_int_attr(file, "version", name);
  if (version != kDatasetVersion) {
    throw DataError(name + ": shard format version " + std::to_string(version) +
                        " is not supported (this build reads " +
                        std::to_string(kDatasetVersion) + ")",
                    "re-pack the dataset with this fer-pack");
  }
  const ShardLayout& want = expect.layout;
  const auto split = read_string_attr(file, "split", name);
  const long long index = read_int_attr(file, "shard_index", name);
  const long long num = read_int_attr(file, "num_shards", name);
  if (split != want.split || index != want.shard_index || num != want.num_shards) {
    throw DataError(name + ": shard says it is " + split + " " + std::to_string(index) + "/" +
                    std::to_string(num) + ", the manifest expects " + want.split + " " +
                    std::to_string(want.shard_index) + "/" + std::to_string(want.num_shards));
  }
  std::vector<hsize_t> label_dims, id_dims;
  impl_->images = open_dataset(file, kImages, name, &impl_->image_dims);
  impl_->labels = open_dataset(file, kLabels, name, &label_dims);
  impl_->ids = open_dataset(file, kIds, name, &id_dims);
  const auto& d = impl_->image_dims;
  if (d.size() != 4 || d[1] != hsize_t(want.height) || d[2] != hsize_t(want.width) ||
      d[3] != hsize_t(want.channels)) {
    std::string shape;
    for (auto v : d) shape += (shape.empty() ? "" : "x") + std::to_string(v);
    throw DataError(name + ": /images has shape " + shape + ", expected Nx" +
                    std::to_string(want.height) + "x" + std::to_string(want.width) + "x" +
                    std::to_string(want.channels));
  }
  if (d[0] > hsize_t(kMaxShardImages)) {
    throw DataError(name + ": /images claims " + std::to_string(d[0]) + " images, more than " +
                    std::to_string(kMaxShardImages) + " a shard may hold");
  }
  count_ = static_cast<std::int64_t>(d[0]);
  if (label_dims.size() != 1 || id_dims.size() != 1 || label_dims[0] != d[0] ||
      id_dims[0] != d[0]) {
    throw DataError(name + ": /images, /labels and /ids have different lengths");
  }
  if (expect.count >= 0 && count_ != expect.count) {
    throw DataError(name + ": holds " + std::to_string(count_) + " images, the manifest says " +
                    std::to_string(expect.count));
  }
  h5::PropList dcpl(FER_H5_CHECK(H5Dget_create_plist(impl_->images.get()), DataError, name));
  std::vector<hsize_t> chunk(4, 0);
  if (H5Pget_layout(dcpl.get()) == H5D_CHUNKED && H5Pget_chunk(dcpl.get(), 4, chunk.data()) == 4 &&
      chunk[0] > 0) {
    // Only a read-alignment hint: capped so a hostile chunk size cannot size huge read blocks.
    chunk_images_ = static_cast<std::int64_t>(std::min<hsize_t>(chunk[0], kMaxReadChunkImages));
  } else {
    chunk_images_ = std::max<std::int64_t>(1, count_);
  }
}

ShardReader::~ShardReader() = default;
ShardReader::ShardReader(ShardReader&&) noexcept = default;
ShardReader& ShardReader::operator=(ShardReader&&) noexcept = default;

void ShardReader::read_images(std::int64_t start, std::int64_t n, std::uint8_t* out) const {
  read_rows(impl_->images.get(), H5T_NATIVE_UINT8, impl_->image_dims, start, n, out,
            path_.string());
}

void ShardReader::read_labels(std::int64_t start, std::int64_t n, std::uint8_t* out) const {
  read_rows(impl_->labels.get(), H5T_NATIVE_UINT8, {hsize_t(count_)}, start, n, out,
            path_.string());
  for (std::int64_t i = 0; i < n; ++i) {
    if (out[i] >= num_classes_) {
      throw DataError(path_.string() + ": label " + std::to_string(out[i]) + " of image " +
                      std::to_string(start + i) + " is out of range (" +
                      std::to_string(num_classes_) + " classes)");
    }
  }
}

std::vector<std::string> ShardReader::read_ids(std::int64_t start, std::int64_t n) const {
  h5::Datatype type = vlen_string_type();
  std::vector<char*> raw(static_cast<std::size_t>(std::max<std::int64_t>(n, 0)), nullptr);
  read_rows(impl_->ids.get(), type.get(), {hsize_t(count_)}, start, n, raw.data(),
            path_.string());
  std::vector<std::string> ids;
  ids.reserve(raw.size());
  for (char* s : raw) ids.emplace_back(s ? s : "");
  // Release HDF5's allocations for the variable-length strings.
  if (n > 0) {
    hsize_t dims[1] = {hsize_t(n)};
    h5::Dataspace space(H5Screate_simple(1, dims, nullptr));
    H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, raw.data());
  }
  return ids;
}

}  // namespace fer
