#include "common/fault.h"

#include <cstdlib>

#include "common/errors.h"

namespace fer {

FaultPlan parse_fault_plan(const std::string& text) {
  FaultPlan plan;
  std::size_t start = 0;
  while (start < text.size()) {
    const auto comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? comma : comma - start);
    const auto colon = item.find(':');
    if (colon == std::string::npos) {
      throw ConfigError("FER_FAULT_INJECT: '" + item + "' is not key:value");
    }
    const std::string key = item.substr(0, colon), value = item.substr(colon + 1);
    try {
      if (key == "kind") {
        if (value != "nan" && value != "exit" && value != "hang" && value != "preempt") {
          throw std::invalid_argument(key);
        }
        plan.kind = value;
      } else if (key == "rank") {
        plan.rank = std::stoi(value);
      } else if (key == "step") {
        plan.step = std::stoll(value);
      } else {
        throw std::invalid_argument(key);
      }
    } catch (const std::exception&) {
      throw ConfigError("FER_FAULT_INJECT: bad item '" + item + "'",
                        "expected kind:nan|exit|hang|preempt, rank:N, step:N");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (!plan.kind.empty() && plan.step < 0) {
    throw ConfigError("FER_FAULT_INJECT: needs step:N");
  }
  return plan;
}

FaultPlan fault_plan_from_env() {
  const char* value = std::getenv("FER_FAULT_INJECT");
  return value ? parse_fault_plan(value) : FaultPlan{};
}

}  // namespace fer
