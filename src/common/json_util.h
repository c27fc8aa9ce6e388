#pragma once
// Checks on parsed JSON shared by the readers of untrusted files (manifest.json, checkpoint
// metadata). Include only from .cpp files that already parse JSON: it pulls in nlohmann/json.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>

namespace fer {

// True when `value` is a JSON integer within T's range. Check before get<T>(): nlohmann's own
// conversion casts floats to integers (undefined behaviour for out-of-range values) and wraps
// integers that do not fit.
template <typename T>
bool is_integer_in_range(const nlohmann::json& value) {
  using limits = std::numeric_limits<T>;
  if (value.is_number_unsigned()) {
    return value.get<std::uint64_t>() <= static_cast<std::uint64_t>(limits::max());
  }
  return value.is_number_integer() &&
         value.get<std::int64_t>() >= static_cast<std::int64_t>(limits::min()) &&
         value.get<std::int64_t>() <= static_cast<std::int64_t>(limits::max());
}

}  // namespace fer
