#include "dist/communicator.h"

#include <ATen/ATen.h>

#include <sstream>


namespace fer {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "unknown";
}

void Communicator::allreduce(at::Tensor& t, ReduceOp op) { allreduce_async(t, op)->wait(); }

void Communicator::broadcast(at::Tensor& t, int root) { broadcast_async(t, root)->wait(); }


namespace detail {

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kShort:
      return "int16";
    case at::kChar:
      return "int8";
    case at::kByte:
      return "uint8";
    case at::kBool:
      return "bool";
    default:
      return c10::toString(type);
  }
}

std::string tensor_summary(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream os;
  os << dtype_name(t.scalar_type()) << t.sizes();
  return os.str();
}

}  // namespace detail
}  // namespace fer
