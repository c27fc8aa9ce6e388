#include "common/errors.h"

#include <cstring>

namespace fer::detail {

std::string source_location(const char* file, int line) {
  const char* slash = std::strrchr(file, '/');
  return concat(slash ? slash + 1 : file, ":", line);
}

}  // namespace fer::detail
