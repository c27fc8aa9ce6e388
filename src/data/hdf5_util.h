// Move-only RAII owners for HDF5 handles and the two HDF5 check macros. Internal to src/data:
// nothing outside the shard reader/writer touches HDF5.
#pragma once

#include <hdf5.h>

#include <string>
#include <utility>

namespace fer::h5 {

// The newest message on HDF5's error stack ("" if none); HDF5's own printing is turned off.
std::string last_error_message();
// Turns off HDF5's automatic error printing (idempotent, thread-safe enough: called before use).
void silence_errors();

// One owner type per handle kind, differing only in the close function.
template <herr_t (*Close)(hid_t)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, -1)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, -1);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now; returns false if HDF5 reported an error (e.g. a failed flush while closing a file).
  bool reset() {
    if (id_ < 0) return true;
    const herr_t rc = Close(std::exchange(id_, -1));
    return rc >= 0;
  }

 private:
  hid_t id_ = -1;
};

using File = Handle<H5Fclose>;
using Dataset = Handle<H5Dclose>;
using Dataspace = Handle<H5Sclose>;
using Datatype = Handle<H5Tclose>;
using PropList = Handle<H5Pclose>;
using Attribute = Handle<H5Aclose>;

}  // namespace fer::h5

// Throws ErrorType("<what>: <call> failed: <hdf5 message> [file:line]") when the call returns < 0.
#define FER_H5_CHECK(call, ErrorType, what)                                                  \
  ([&]() {                                                                                   \
    auto fer_h5_rc_ = (call);                                                                \
    if (fer_h5_rc_ < 0) {                                                                    \
      throw ErrorType(::fer::detail::concat(what, ": ", #call, " failed: ",                  \
                                            ::fer::h5::last_error_message(), " [",           \
                                            ::fer::detail::source_location(__FILE__, __LINE__), \
                                            "]"));                                           \
    }                                                                                        \
    return fer_h5_rc_;                                                                       \
  }())

// Logs instead of throwing: for destructors and cleanup paths.
#define FER_H5_LOG(call, what)                                                              \
  do {                                                                                      \
    if ((call) < 0) {                                                                       \
      spdlog::warn("{}: {} failed: {} [{}]", what, #call, ::fer::h5::last_error_message(),  \
                   ::fer::detail::source_location(__FILE__, __LINE__));                     \
    }                                                                                       \
  } while (0)
