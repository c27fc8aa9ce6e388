#include "data/hdf5_util.h"

#include <mutex>

namespace fer::h5 {
namespace {

herr_t keep_innermost(unsigned n, const H5E_error2_t* err, void* client) {
  auto* out = static_cast<std::string*>(client);
  if (n == 0 && err->desc) *out = err->desc;
  return 0;
}

}  // namespace

void silence_errors() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

std::string last_error_message() {
  std::string message;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, keep_innermost, &message);
  if (message.empty()) message = "unknown HDF5 error";
  H5Eclear2(H5E_DEFAULT);
  return message;
}

}  // namespace fer::h5
