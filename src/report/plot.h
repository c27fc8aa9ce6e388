// Small chart drawing on top of OpenCV's imgproc (no plotting dependency): line charts, grouped
// bar charts and labelled heat maps, each with a title, axis labels, tick values and a legend.
//
// Every draw_* function is pure: it returns a new 8-bit BGR image and touches no shared state, so
// charts may be drawn on any thread. Coordinates in the specs are data units; pixel layout
// (margins, fonts, ticks) is decided here so all charts of a report look alike.
//
// Any input is drawn in bounded time: NaN/inf, empty or one-point series, flat, tiny (1e-12) or
// huge (1e300) ranges, equal, inverted or non-finite axis bounds. The work depends on the number
// of points, categories and cells and the image size, never on the data values (every loop has
// an integer bound computed before it starts; tests/unit/report_plot_property_test.cpp).
#pragma once

#include <filesystem>
#include <opencv2/core.hpp>
#include <optional>
#include <string>
#include <vector>

namespace fer::report {

// Colour-blind-safe palette (Okabe-Ito), BGR; series without a colour take kPalette[i % size].
const std::vector<cv::Scalar>& palette();

struct Axis {
  std::string label;           // drawn along the axis, e.g. "epoch"
  std::optional<double> min;   // data range; unset (or not finite) = from the data, padded
  std::optional<double> max;   // min == max: widened around it; min > max: swapped
  bool integer_ticks = false;  // ticks only at whole numbers (epochs, steps)
};

struct Series {
  std::string label;                // legend entry; empty = not in the legend
  std::vector<double> x, y;         // same length; non-finite points are skipped
  std::optional<cv::Scalar> color;  // BGR; unset = palette by index
  bool markers = false;             // a dot on every point (few points, e.g. per epoch)
  bool dashed = false;              // tell two series of one colour apart
};

struct LineChart {
  std::string title;
  Axis x, y;
  std::vector<Series> series;
};

// Grouped bars: for each category, one bar per group (e.g. precision/recall/F1 per class).
struct BarChart {
  std::string title;
  std::string x_label;
  Axis y;
  std::vector<std::string> categories;      // along x
  std::vector<std::string> groups;          // legend entries, one bar each per category
  std::vector<std::vector<double>> values;  // [group][category]
  bool value_labels = true;                 // print each bar's value above it
};

// A matrix of cells coloured by `shade` (0..1, e.g. the row-normalized count) and labelled with
// `values` (e.g. the counts), with row and column labels and a colour bar.
struct HeatMap {
  std::string title;
  std::string x_label, y_label;  // e.g. "predicted", "true"
  std::vector<std::string> row_labels, col_labels;
  std::vector<std::vector<double>> values;  // [row][col], printed in the cells
  std::vector<std::vector<double>> shade;   // [row][col] in [0,1]; empty/missing = values / max
  std::string shade_label;                  // colour bar caption, e.g. "fraction of the row"
  int value_decimals = 0;                   // 0 for counts
};

cv::Mat draw_line_chart(const LineChart& chart, cv::Size size = {900, 520});
cv::Mat draw_bar_chart(const BarChart& chart, cv::Size size = {900, 520});
cv::Mat draw_heat_map(const HeatMap& map, cv::Size size = {760, 700});

// Ticks at 1, 2 or 5 times a power of ten covering [lo, hi], about `target` of them: finite,
// increasing, at most 100. {lo} when hi <= lo; none when lo or hi is not finite.
std::vector<double> nice_ticks(double lo, double hi, int target, bool integer_only = false);

// Tick text with just enough decimals for `step` ("0.25"; "2.0e-04" for tiny steps, "1.5e+30" for
// values from 1e9 up).
std::string format_tick(double value, double step);

// Encodes PNG and writes it atomically. Throws IoError.
void write_png(const std::filesystem::path& path, const cv::Mat& image);

}  // namespace fer::report
