// A face's bounding box in pixels, shared by the detector (predictor.h) and the tracker
// (tracker.h), which needs no OpenCV.
#pragma once

#include <algorithm>

namespace fer {

struct FaceBox {
  int x = 0, y = 0, width = 0, height = 0;  // pixels of the original image or frame
};

// Intersection over union of two boxes, in [0, 1]; 0 when either is empty.
inline double iou(const FaceBox& a, const FaceBox& b) {
  const long ix = std::max(0, std::min(a.x + a.width, b.x + b.width) - std::max(a.x, b.x));
  const long iy = std::max(0, std::min(a.y + a.height, b.y + b.height) - std::max(a.y, b.y));
  const long inter = ix * iy;
  const long uni =
      static_cast<long>(a.width) * a.height + static_cast<long>(b.width) * b.height - inter;
  return uni > 0 && inter > 0 ? static_cast<double>(inter) / static_cast<double>(uni) : 0.0;
}

}  // namespace fer
