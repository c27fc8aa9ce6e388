#include "report/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "common/errors.h"
#include "common/fs_util.h"

namespace fer::report {
namespace {

constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr double kTitleScale = 0.7;   // title text
constexpr double kLabelScale = 0.55;  // axis labels and legend
constexpr double kTickScale = 0.45;   // tick values, category names
constexpr double kValueScale = 0.38;  // numbers on bars and in cells
constexpr int kMarginLeft = 95;       // room for tick values and the rotated y label
constexpr int kMarginRight = 30;
constexpr int kMarginTop = 72;     // title row, then the legend row
constexpr int kMarginBottom = 62;  // tick values, then the x label
const cv::Scalar kBackground(255, 255, 255);
const cv::Scalar kInk(40, 40, 40);
const cv::Scalar kGrid(225, 225, 225);
const cv::Scalar kAxis(110, 110, 110);

// Every loop below runs a number of times fixed before it starts (an integer counter against a
// computed cap), never "until a double reaches a value": a double that stops moving (its step
// below its spacing) once made a dashed line spin forever (issue 16). These bounds keep the
// arithmetic that computes those caps finite and meaningful:
constexpr double kMaxMagnitude = 1e300;    // axis ends are clamped here: hi - lo cannot overflow
constexpr double kMinRelativeSpan = 1e-9;  // narrower axes are widened: ticks stay distinct
constexpr double kTinyMagnitude = 1e-200;  // a flat series nearer 0 than this gets [-1, 1]
constexpr double kFarPixels = 1e9;         // data far outside the frame maps to at most this
constexpr std::size_t kMaxTicks = 100;     // nice_ticks never returns more

enum class HAlign { kLeft, kCenter, kRight };
enum class VAlign { kTop, kMiddle, kBottom };

cv::Size text_size(const std::string& text, double scale, int thickness = 1) {
  int baseline = 0;
  return cv::getTextSize(text, kFont, scale, thickness, &baseline);
}

// Draws `text` with its box aligned to `anchor` as asked.
void draw_text(cv::Mat& img, const std::string& text, cv::Point anchor, double scale,
               const cv::Scalar& color, HAlign h = HAlign::kLeft, VAlign v = VAlign::kBottom,
               int thickness = 1) {
  const cv::Size size = text_size(text, scale, thickness);
  int x = anchor.x, y = anchor.y;  // putText's origin is the bottom-left of the text
  if (h == HAlign::kCenter) x -= size.width / 2;
  if (h == HAlign::kRight) x -= size.width;
  if (v == VAlign::kTop) y += size.height;
  if (v == VAlign::kMiddle) y += size.height / 2;
  cv::putText(img, text, {x, y}, kFont, scale, color, thickness, cv::LINE_AA);
}

// Text rotated 90 degrees counter-clockwise (reads bottom to top), centred on `centre`.
void draw_vertical_text(cv::Mat& img, const std::string& text, cv::Point centre, double scale,
                        const cv::Scalar& color) {
  const cv::Size size = text_size(text, scale);
  cv::Mat patch(size.height + 8, size.width + 4, img.type(), kBackground);
  cv::Mat mask(patch.size(), CV_8UC1, cv::Scalar(0));
  cv::putText(patch, text, {2, size.height + 2}, kFont, scale, color, 1, cv::LINE_AA);
  cv::putText(mask, text, {2, size.height + 2}, kFont, scale, cv::Scalar(255), 1, cv::LINE_AA);
  cv::rotate(patch, patch, cv::ROTATE_90_COUNTERCLOCKWISE);
  cv::rotate(mask, mask, cv::ROTATE_90_COUNTERCLOCKWISE);
  cv::Rect target(centre.x - patch.cols / 2, centre.y - patch.rows / 2, patch.cols, patch.rows);
  const cv::Rect clipped = target & cv::Rect(0, 0, img.cols, img.rows);
  if (clipped.empty()) return;
  const cv::Rect source(clipped.x - target.x, clipped.y - target.y, clipped.width, clipped.height);
  patch(source).copyTo(img(clipped), mask(source));
}

void draw_title(cv::Mat& img, const std::string& title) {
  draw_text(img, title, {img.cols / 2, 12}, kTitleScale, kInk, HAlign::kCenter, VAlign::kTop, 2);
}

// One legend entry: a swatch (line or filled square) and its text.
struct LegendEntry {
  std::string label;
  cv::Scalar color;
  bool filled = false;  // bar charts
  bool dashed = false;
};

// A horizontal legend in the row under the title, centred. Never covers data.
void draw_legend(cv::Mat& img, const std::vector<LegendEntry>& entries) {
  constexpr int kSwatch = 26, kGap = 8, kSpacing = 24;
  int total = 0;
  for (const auto& e : entries) total += kSwatch + kGap + text_size(e.label, kLabelScale).width;
  total += kSpacing * (static_cast<int>(entries.size()) - 1);
  int x = std::max(4, (img.cols - total) / 2);
  const int y = 50;  // centre line of the row
  for (const auto& e : entries) {
    if (e.filled) {
      cv::rectangle(img, {x + 6, y - 7}, {x + kSwatch - 6, y + 7}, e.color, cv::FILLED);
    } else if (e.dashed) {
      cv::line(img, {x, y}, {x + 9, y}, e.color, 2, cv::LINE_AA);
      cv::line(img, {x + 16, y}, {x + kSwatch, y}, e.color, 2, cv::LINE_AA);
    } else {
      cv::line(img, {x, y}, {x + kSwatch, y}, e.color, 2, cv::LINE_AA);
    }
    x += kSwatch + kGap;
    draw_text(img, e.label, {x, y}, kLabelScale, kInk, HAlign::kLeft, VAlign::kMiddle);
    x += text_size(e.label, kLabelScale).width + kSpacing;
  }
}

// The data range of an axis: the spec's bounds, else the data's, widened to whole ticks.
// Always finite with hi > lo, whatever the data or the spec (NaN, inf, equal or inverted bounds).
struct Range {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  double step = 1;
};

// The tick step nice_ticks uses for [lo, hi]: 1, 2 or 5 times a power of ten, about `target`
// ticks. Needs finite lo < hi; returns a finite positive step.
double tick_step(double lo, double hi, int target, bool integer_only) {
  const double raw = (hi / 2 - lo / 2) / std::max(1, target) * 2;  // halves: no overflow
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  if (!(mag > 0) || !std::isfinite(mag)) return integer_only ? 1.0 : std::max(raw, 1e-300);
  const double norm = raw / mag;
  const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  return integer_only ? std::max(1.0, std::round(step)) : step;
}

Range resolve_range(const Axis& axis, double data_lo, double data_hi, int target_ticks) {
  bool fixed_lo = axis.min && std::isfinite(*axis.min);
  bool fixed_hi = axis.max && std::isfinite(*axis.max);
  double lo = fixed_lo ? *axis.min : data_lo, hi = fixed_hi ? *axis.max : data_hi;
  if (!std::isfinite(lo) && !std::isfinite(hi)) {  // no data and no bounds
    lo = 0;
    hi = 1;
  }
  if (!std::isfinite(lo)) lo = hi;  // one end known: the flat case below widens it
  if (!std::isfinite(hi)) hi = lo;
  lo = std::clamp(lo, -kMaxMagnitude, kMaxMagnitude);
  hi = std::clamp(hi, -kMaxMagnitude, kMaxMagnitude);
  if (hi < lo) {
    std::swap(lo, hi);
    std::swap(fixed_lo, fixed_hi);
  }
  const double magnitude = std::max(std::abs(lo), std::abs(hi));
  if (hi - lo <= std::max(kMinRelativeSpan * magnitude, kTinyMagnitude)) {
    // A flat series still gets an axis. A fixed end stays unless both are (a degenerate spec).
    const double pad = magnitude < kTinyMagnitude ? 1.0 : magnitude * 0.1;
    if (!fixed_lo || fixed_hi) lo -= pad;
    if (!fixed_hi || fixed_lo) hi += pad;
  }
  Range r;
  r.step = tick_step(lo, hi, target_ticks, axis.integer_ticks);
  // Snap free ends outwards to a tick so the frame starts and ends on labelled values. The span
  // is at least kMinRelativeSpan of the magnitude, so lo / step stays far below 2^53.
  if (!fixed_lo) lo = std::floor(lo / r.step + 1e-9) * r.step;
  if (!fixed_hi) hi = std::ceil(hi / r.step - 1e-9) * r.step;
  if (!(hi > lo) || !std::isfinite(hi - lo)) {  // unreachable by the bounds above; cheap to keep
    lo = 0;
    hi = 1;
  }
  r.lo = lo;
  r.hi = hi;
  r.ticks = nice_ticks(lo, hi, target_ticks, axis.integer_ticks);
  r.step = tick_step(lo, hi, target_ticks, axis.integer_ticks);
  return r;
}

// Maps data to pixels inside `area`.
struct Frame {
  cv::Rect area;
  Range x, y;
  // Finite for any finite input (far-away data is clamped to kFarPixels, which only bends lines
  // to points a million frames away).
  cv::Point2d to_px(double vx, double vy) const {
    const double fx = (vx - x.lo) / (x.hi - x.lo), fy = (vy - y.lo) / (y.hi - y.lo);
    return {std::clamp(area.x + fx * area.width, -kFarPixels, kFarPixels),
            std::clamp(area.y + area.height - fy * area.height, -kFarPixels, kFarPixels)};
  }
};

// Grid, frame, tick values and axis labels. `x_ticks` false for category axes.
void draw_axes(cv::Mat& img, const Frame& f, const std::string& x_label, const std::string& y_label,
               bool x_ticks) {
  for (double t : f.y.ticks) {
    const int py = static_cast<int>(std::lround(f.to_px(f.x.lo, t).y));
    cv::line(img, {f.area.x, py}, {f.area.x + f.area.width, py}, kGrid, 1);
    cv::line(img, {f.area.x - 5, py}, {f.area.x, py}, kAxis, 1);
    draw_text(img, format_tick(t, f.y.step), {f.area.x - 8, py}, kTickScale, kInk, HAlign::kRight,
              VAlign::kMiddle);
  }
  if (x_ticks) {
    for (double t : f.x.ticks) {
      const int px = static_cast<int>(std::lround(f.to_px(t, f.y.lo).x));
      cv::line(img, {px, f.area.y}, {px, f.area.y + f.area.height}, kGrid, 1);
      cv::line(img, {px, f.area.y + f.area.height}, {px, f.area.y + f.area.height + 5}, kAxis, 1);
      draw_text(img, format_tick(t, f.x.step), {px, f.area.y + f.area.height + 9}, kTickScale, kInk,
                HAlign::kCenter, VAlign::kTop);
    }
  }
  cv::rectangle(img, f.area, kAxis, 1);
  draw_text(img, x_label, {f.area.x + f.area.width / 2, img.rows - 10}, kLabelScale, kInk,
            HAlign::kCenter, VAlign::kBottom);
  draw_vertical_text(img, y_label, {16, f.area.y + f.area.height / 2}, kLabelScale, kInk);
}

// Clips segment a-b (finite) to `box` (Liang-Barsky). Returns false when nothing is inside,
// else the parameters 0 <= *t0 <= *t1 <= 1 of the visible part.
bool clip_segment(const cv::Point2d& a, const cv::Point2d& b, const cv::Rect2d& box, double* t0,
                  double* t1) {
  const cv::Point2d d = b - a;
  const double p[4] = {-d.x, d.x, -d.y, d.y};
  const double q[4] = {a.x - box.x, box.x + box.width - a.x, a.y - box.y, box.y + box.height - a.y};
  *t0 = 0;
  *t1 = 1;
  for (int i = 0; i < 4; ++i) {
    if (p[i] == 0) {
      if (q[i] < 0) return false;  // parallel to this edge and outside it
      continue;
    }
    const double t = q[i] / p[i];
    if (p[i] < 0) {
      *t0 = std::max(*t0, t);  // entering
    } else {
      *t1 = std::min(*t1, t);  // leaving
    }
  }
  return *t0 <= *t1;
}

// A polyline clipped to the image, solid or dashed (the dash pattern continues across vertices).
// Points must be finite (Frame::to_px guarantees it). Work is bounded by the image, not by the
// data: a dashed segment draws at most diagonal / period + 2 dashes however long it is.
void draw_polyline(cv::Mat& img, const std::vector<cv::Point2d>& pts, const cv::Scalar& color,
                   bool dashed) {
  constexpr double kDash = 9, kSpace = 6, kPeriod = kDash + kSpace;
  constexpr double kPad = 4;  // line width and anti-aliasing reach past the border
  const cv::Rect2d box(-kPad, -kPad, img.cols + 2 * kPad, img.rows + 2 * kPad);
  const int max_dashes =
      static_cast<int>(std::ceil(std::hypot(box.width, box.height) / kPeriod)) + 2;
  double phase = 0;  // distance into the dash+space period at the start of the segment
  for (std::size_t i = 1; i < pts.size(); ++i) {
    const cv::Point2d a = pts[i - 1], b = pts[i];
    const double len = cv::norm(b - a);
    double t0 = 0, t1 = 0;
    const bool visible = len > 0 && clip_segment(a, b, box, &t0, &t1);
    if (visible && !dashed) {
      cv::line(img, a + (b - a) * t0, a + (b - a) * t1, color, 2, cv::LINE_AA);
    }
    if (visible && dashed) {
      const cv::Point2d start = a + (b - a) * t0, unit = (b - a) / len;
      const double shown = (t1 - t0) * len;                        // <= the box diagonal
      const double offset = std::fmod(phase + t0 * len, kPeriod);  // into the period at `start`
      // Dash k covers [k * kPeriod - offset, k * kPeriod - offset + kDash] along the visible part.
      const int dashes =
          std::min(max_dashes, static_cast<int>(std::ceil((offset + shown) / kPeriod)) + 1);
      for (int k = 0; k < dashes; ++k) {
        const double d0 = std::max(0.0, k * kPeriod - offset);
        const double d1 = std::min(shown, k * kPeriod - offset + kDash);
        if (d1 > d0) cv::line(img, start + unit * d0, start + unit * d1, color, 2, cv::LINE_AA);
      }
    }
    phase = std::fmod(phase + len, kPeriod);
  }
}

cv::Scalar series_color(const std::optional<cv::Scalar>& color, std::size_t index) {
  return color ? *color : palette()[index % palette().size()];
}

// Text that fits `width` pixels: the full text, else shortened with "..".
std::string fit_text(const std::string& text, double scale, int width) {
  if (text_size(text, scale).width <= width) return text;
  std::string s = text;
  while (s.size() > 1 && text_size(s + "..", scale).width > width) s.pop_back();
  return s + "..";
}

// Category label under a slot: horizontal when it fits, else vertical.
void draw_category_label(cv::Mat& img, const std::string& text, int centre_x, int top, int width) {
  if (text_size(text, kTickScale).width <= width) {
    draw_text(img, text, {centre_x, top}, kTickScale, kInk, HAlign::kCenter, VAlign::kTop);
  } else {
    const std::string shown = fit_text(text, kTickScale, 90);
    draw_vertical_text(img, shown, {centre_x, top + text_size(shown, kTickScale).width / 2 + 2},
                       kTickScale, kInk);
  }
}

// Pixels below the axis that draw_category_label needs for `text` in a slot `width` wide.
int category_label_extent(const std::string& text, int width) {
  const cv::Size size = text_size(text, kTickScale);
  if (size.width <= width) return size.height + 8;
  return text_size(fit_text(text, kTickScale, 90), kTickScale).width + 12;
}

// Sequential white -> dark blue scale for the heat map; t in [0,1].
cv::Scalar heat_color(double t) {
  t = std::clamp(t, 0.0, 1.0);
  const cv::Scalar lo(255, 251, 247), mid(225, 158, 107), hi(107, 48, 8);  // BGR
  return t < 0.5 ? lo + (mid - lo) * (t * 2) : mid + (hi - mid) * ((t - 0.5) * 2);
}

}  // namespace

const std::vector<cv::Scalar>& palette() {
  static const std::vector<cv::Scalar> colors = {
      {178, 114, 0},    // blue
      {0, 94, 213},     // vermillion
      {115, 158, 0},    // bluish green
      {167, 121, 204},  // reddish purple
      {0, 159, 230},    // orange
      {233, 180, 86},   // sky blue
      {66, 228, 240},   // yellow
      {0, 0, 0},        // black
  };
  return colors;
}

std::vector<double> nice_ticks(double lo, double hi, int target, bool integer_only) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (!(hi > lo)) return {lo};
  const double step = tick_step(lo, hi, target, integer_only);
  const double first = std::ceil(lo / step - 1e-9), last = std::floor(hi / step + 1e-9);
  // Tick i is (first + i) * step: computed, not accumulated, so the count is known up front.
  const double count = last - first + 1;
  const std::size_t n =
      count >= 1 ? static_cast<std::size_t>(std::min<double>(count, kMaxTicks)) : 0;
  std::vector<double> ticks;
  for (std::size_t i = 0; i < n; ++i) {
    const double t = (first + static_cast<double>(i)) * step;
    // Ticks must increase; a step below the spacing of doubles near lo (only for ranges narrower
    // than resolve_range allows) would repeat values.
    if (!ticks.empty() && !(t > ticks.back())) continue;
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::string format_tick(double value, double step) {
  char buf[48];
  if (value == 0) return "0";
  if (!std::isfinite(value)) return std::isnan(value) ? "nan" : value > 0 ? "inf" : "-inf";
  if ((step > 0 && step < 1e-3) || std::abs(value) >= 1e9) {
    // Scientific, with the mantissa digits down to the step's leading digit (ticks are 1, 2 or
    // 5 times a power of ten, so that tells neighbours apart).
    const double places = step > 0 ? std::floor(std::log10(std::abs(value)) + 1e-9) -
                                         std::floor(std::log10(step) + 1e-9)
                                   : 1;
    const int digits = static_cast<int>(std::clamp(places, 1.0, 15.0));
    std::snprintf(buf, sizeof buf, "%.*e", digits, value);
  } else {
    const int decimals =
        step >= 1 || !(step > 0) ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
    std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  }
  return buf;
}

cv::Mat draw_line_chart(const LineChart& chart, cv::Size size) {
  cv::Mat img(size, CV_8UC3, kBackground);
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo, ylo = xlo, yhi = -xlo;
  for (const auto& s : chart.series) {
    for (std::size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xlo = std::min(xlo, s.x[i]);
      xhi = std::max(xhi, s.x[i]);
      ylo = std::min(ylo, s.y[i]);
      yhi = std::max(yhi, s.y[i]);
    }
  }
  Frame f;
  f.area = cv::Rect(kMarginLeft, kMarginTop, size.width - kMarginLeft - kMarginRight,
                    size.height - kMarginTop - kMarginBottom);
  f.x = resolve_range(chart.x, xlo, xhi, 8);
  f.y = resolve_range(chart.y, ylo, yhi, 6);
  draw_title(img, chart.title);
  draw_axes(img, f, chart.x.label, chart.y.label, /*x_ticks=*/true);
  if (!std::isfinite(xlo)) {
    draw_text(img, "no data", {f.area.x + f.area.width / 2, f.area.y + f.area.height / 2},
              kLabelScale, kAxis, HAlign::kCenter, VAlign::kMiddle);
  }
  std::vector<LegendEntry> legend;
  cv::Mat plot = img(f.area);  // clip lines to the frame
  for (std::size_t k = 0; k < chart.series.size(); ++k) {
    const Series& s = chart.series[k];
    const cv::Scalar color = series_color(s.color, k);
    std::vector<cv::Point2d> pts;
    for (std::size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      pts.push_back(f.to_px(s.x[i], s.y[i]) - cv::Point2d(f.area.x, f.area.y));
    }
    draw_polyline(plot, pts, color, s.dashed);
    if (s.markers || pts.size() == 1) {
      const cv::Rect2d near_frame(-8, -8, plot.cols + 16, plot.rows + 16);
      for (const auto& p : pts) {
        if (near_frame.contains(p)) cv::circle(plot, p, 4, color, cv::FILLED, cv::LINE_AA);
      }
    }
    if (!s.label.empty()) legend.push_back({s.label, color, false, s.dashed});
  }
  cv::rectangle(img, f.area, kAxis, 1);
  if (!legend.empty()) draw_legend(img, legend);
  return img;
}

cv::Mat draw_bar_chart(const BarChart& chart, cv::Size size) {
  cv::Mat img(size, CV_8UC3, kBackground);
  double lo = 0, hi = 0;  // bars start at zero
  for (const auto& g : chart.values) {
    for (double v : g) {
      if (!std::isfinite(v)) continue;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  const int n = static_cast<int>(chart.categories.size());
  const int plot_width = size.width - kMarginLeft - kMarginRight;
  int label_room = 0;  // vertical names when they do not fit their slot
  for (const auto& c : chart.categories) {
    label_room = std::max(label_room, category_label_extent(c, plot_width / std::max(1, n) - 4));
  }
  Frame f;
  f.area = cv::Rect(kMarginLeft, kMarginTop, plot_width,
                    size.height - kMarginTop - kMarginBottom - std::max(0, label_room - 26));
  f.x.lo = 0;
  f.x.hi = std::max<double>(1, chart.categories.size());
  f.y = resolve_range(chart.y, lo, hi, 5);
  draw_title(img, chart.title);
  draw_axes(img, f, chart.x_label, chart.y.label, /*x_ticks=*/false);
  const int groups = static_cast<int>(chart.values.size());
  const double slot = static_cast<double>(f.area.width) / std::max(1, n);
  const double bar = slot * 0.8 / std::max(1, groups);
  std::vector<LegendEntry> legend;
  for (int g = 0; g < groups; ++g) {
    const cv::Scalar color = palette()[g % palette().size()];
    if (g < static_cast<int>(chart.groups.size())) legend.push_back({chart.groups[g], color, true});
    for (int c = 0; c < n && c < static_cast<int>(chart.values[g].size()); ++c) {
      const double v = chart.values[g][c];
      if (!std::isfinite(v)) continue;
      const double x0 = f.area.x + slot * c + slot * 0.1 + bar * g;
      const cv::Point2d top = f.to_px(0, std::clamp(v, f.y.lo, f.y.hi));
      const cv::Point2d base = f.to_px(0, std::clamp(0.0, f.y.lo, f.y.hi));
      cv::rectangle(img, cv::Point2d(x0 + 1, std::min(top.y, base.y)),
                    cv::Point2d(x0 + bar - 1, std::max(top.y, base.y)), color, cv::FILLED);
      if (chart.value_labels) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "%.2f", v);
        if (text_size(buf, kValueScale).width <= bar + 4) {
          draw_text(img, buf, {static_cast<int>(x0 + bar / 2), static_cast<int>(top.y) - 3},
                    kValueScale, kInk, HAlign::kCenter, VAlign::kBottom);
        }
      }
    }
  }
  for (int c = 0; c < n; ++c) {
    draw_category_label(img, chart.categories[c], static_cast<int>(f.area.x + slot * (c + 0.5)),
                        f.area.y + f.area.height + 8, static_cast<int>(slot) - 4);
  }
  if (!legend.empty()) draw_legend(img, legend);
  return img;
}

cv::Mat draw_heat_map(const HeatMap& map, cv::Size size) {
  cv::Mat img(size, CV_8UC3, kBackground);
  const int rows = static_cast<int>(map.values.size());
  const int cols = rows ? static_cast<int>(map.values[0].size()) : 0;
  int label_w = 0;
  for (const auto& l : map.row_labels) label_w = std::max(label_w, text_size(l, kTickScale).width);
  label_w = std::min(label_w, 160);
  constexpr int kBarWidth = 18, kBarRoom = 90;  // colour bar and its tick values
  const int left = 40 + label_w + 10, top = kMarginTop - 20;
  const int bottom = 110;  // column labels (maybe vertical) + x label
  const int cell = std::max(4, std::min((size.width - left - kBarRoom) / std::max(1, cols),
                                        (size.height - top - bottom) / std::max(1, rows)));
  const cv::Rect grid(left, top, cell * cols, cell * rows);
  draw_title(img, map.title);

  double max_value = 0;
  for (const auto& r : map.values) {
    for (double v : r) max_value = std::max(max_value, std::isfinite(v) ? v : 0.0);
  }
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols && c < static_cast<int>(map.values[r].size()); ++c) {
      const double v = map.values[r][c];
      const bool shaded =
          r < static_cast<int>(map.shade.size()) && c < static_cast<int>(map.shade[r].size());
      double t = shaded ? map.shade[r][c] : max_value > 0 ? v / max_value : 0.0;
      if (!std::isfinite(t)) t = 0;
      const cv::Rect box(grid.x + c * cell, grid.y + r * cell, cell, cell);
      cv::rectangle(img, box, heat_color(t), cv::FILLED);
      cv::rectangle(img, box, kBackground, 1);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.*f", map.value_decimals, v);
      double scale = 0.5;  // shrinks in at most 4 steps to 0.3 until the number fits the cell
      for (int shrink = 0; shrink < 4 && text_size(buf, scale).width > cell - 4; ++shrink) {
        scale -= 0.05;
      }
      draw_text(img, buf, {box.x + cell / 2, box.y + cell / 2}, scale, t > 0.5 ? kBackground : kInk,
                HAlign::kCenter, VAlign::kMiddle);
    }
  }
  cv::rectangle(img, grid, kAxis, 1);
  for (int r = 0; r < rows && r < static_cast<int>(map.row_labels.size()); ++r) {
    draw_text(img, fit_text(map.row_labels[r], kTickScale, label_w),
              {grid.x - 8, grid.y + r * cell + cell / 2}, kTickScale, kInk, HAlign::kRight,
              VAlign::kMiddle);
  }
  for (int c = 0; c < cols && c < static_cast<int>(map.col_labels.size()); ++c) {
    draw_category_label(img, map.col_labels[c], grid.x + c * cell + cell / 2,
                        grid.y + grid.height + 8, cell - 4);
  }
  int label_room = 0;
  for (const auto& l : map.col_labels)
    label_room = std::max(label_room, category_label_extent(l, cell - 4));
  draw_text(img, map.x_label, {grid.x + grid.width / 2, grid.y + grid.height + label_room + 12},
            kLabelScale, kInk, HAlign::kCenter, VAlign::kTop);
  draw_vertical_text(img, map.y_label, {16, grid.y + grid.height / 2}, kLabelScale, kInk);

  // Colour bar: 0 at the bottom, 1 at the top, with its caption.
  const cv::Rect bar(grid.x + grid.width + 20, grid.y, kBarWidth, grid.height);
  const int first_row = std::max(0, -bar.y), end_row = std::min(bar.height, img.rows - bar.y);
  for (int y = first_row; y < end_row; ++y) {  // rows inside the image only
    const double t = 1.0 - static_cast<double>(y) / std::max(1, bar.height - 1);
    cv::line(img, {bar.x, bar.y + y}, {bar.x + bar.width - 1, bar.y + y}, heat_color(t), 1);
  }
  cv::rectangle(img, bar, kAxis, 1);
  const double top_value = map.shade.empty() ? max_value : 1.0;
  for (double t : {0.0, 0.5, 1.0}) {
    const int y = bar.y + static_cast<int>(std::lround((1.0 - t) * (bar.height - 1)));
    cv::line(img, {bar.x + bar.width, y}, {bar.x + bar.width + 4, y}, kAxis, 1);
    draw_text(img, format_tick(t * top_value, top_value >= 10 ? 1 : 0.1),
              {bar.x + bar.width + 7, y}, kTickScale, kInk, HAlign::kLeft, VAlign::kMiddle);
  }
  if (!map.shade_label.empty()) {
    draw_vertical_text(img, map.shade_label,
                       {std::min(size.width - 12, bar.x + bar.width + 60), bar.y + bar.height / 2},
                       kTickScale, kInk);
  }
  return img;
}

void write_png(const std::filesystem::path& path, const cv::Mat& image) {
  std::vector<std::uint8_t> bytes;
  bool ok = false;
  try {
    ok = cv::imencode(".png", image, bytes);
  } catch (const cv::Exception& e) {
    throw IoError("cannot encode " + path.string() + " as PNG: " + e.what());
  }
  if (!ok) throw IoError("cannot encode " + path.string() + " as PNG");
  write_file_atomic(path, std::string(bytes.begin(), bytes.end()));
}

}  // namespace fer::report
