#include "synth_face.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <mutex>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <thread>
#include <utility>

#include "common/cancel.h"
#include "common/errors.h"
#include "common/fs_util.h"

namespace fer::tools {
namespace {

namespace fs = std::filesystem;

constexpr double kPi = 3.14159265358979323846;
constexpr int kMinSize = 16;
constexpr int kMaxSize = 512;
constexpr int kMaxPerClass = 1000000;  // file names have six digits
constexpr int kShift = 4;              // fractional bits of the drawing coordinates
constexpr double kProgressPeriodS = 2.0;

enum Label { kAngry, kDisgust, kFear, kHappy, kNeutral, kSad, kSurprise };

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Random numbers from the raw mt19937_64 output only (std:: distributions differ between standard
// libraries), so a (label, seed, index) draws the same face everywhere.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  bool chance(double p) { return uniform() < p; }
  double normal() {                     // Box-Muller, one value per call
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
  }
  double normal(double mean, double sd) { return mean + sd * normal(); }

 private:
  std::mt19937_64 engine_;
};

// --- Face model, in face units: origin at the face centre, x right, y down, 1 = half the face
// width. The expression lives entirely in these parameters.
struct Brow {
  double inner_x, inner_y, outer_x, outer_y, arch, thick;
};
struct Eye {
  double half_w, open_up, open_low, outer_drop, iris_r;
};
enum class MouthKind { kClosed, kOpen, kRound };
struct Mouth {
  MouthKind kind;
  double cy, half_w, lift_left, lift_right;  // lift > 0 raises that corner
  double open_top, open_bot, teeth, lip_thick;
};
struct Face {
  Brow brow[2];  // [0] left side (x < 0), [1] right side
  Eye eye[2];
  double eye_x, eye_y;
  Mouth mouth;
  bool wrinkled_nose = false;
  int sneer_side = 0;  // -1/+1: the side of a raised upper lip (disgust); 0: none
  bool smile_folds = false;
};

double lerp(double neutral, double full, double k) { return neutral + k * (full - neutral); }

// Moves every continuous feature parameter a fraction `k` of the way from neutral to the
// expression (the mouth kind stays).
void blend(const Brow& n, double k, Brow& b) {
  b.inner_x = lerp(n.inner_x, b.inner_x, k);
  b.inner_y = lerp(n.inner_y, b.inner_y, k);
  b.outer_x = lerp(n.outer_x, b.outer_x, k);
  b.outer_y = lerp(n.outer_y, b.outer_y, k);
  b.arch = lerp(n.arch, b.arch, k);
}
void blend(const Eye& n, double k, Eye& e) {
  e.open_up = lerp(n.open_up, e.open_up, k);
  e.open_low = lerp(n.open_low, e.open_low, k);
  e.outer_drop = lerp(n.outer_drop, e.outer_drop, k);
}
void blend(const Mouth& n, double k, Mouth& m) {
  m.cy = lerp(n.cy, m.cy, k);
  m.half_w = lerp(n.half_w, m.half_w, k);
  m.lift_left = lerp(n.lift_left, m.lift_left, k);
  m.lift_right = lerp(n.lift_right, m.lift_right, k);
  m.open_top = lerp(n.open_top, m.open_top, k);
  m.open_bot = lerp(n.open_bot, m.open_bot, k);
  m.lip_thick = lerp(n.lip_thick, m.lip_thick, k);
}

// The expression of `label` at a random intensity (mostly full, sometimes under half way from
// neutral), plus per-sample jitter `j` (face units): the defining cue stays, its strength varies,
// so weak expressions overlap a little with neutral and with each other.
Face draw_expression(int label, Rng& rng) {
  const double j = 0.025;
  Face f;
  const Brow b0{0.14, -0.44, 0.62, -0.44, 0.035, 0.11};
  const Eye e0{0.2, 0.085, 0.065, 0.0, 0.075};
  const Mouth m0{MouthKind::kClosed, 0.56, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.06};
  Brow b = b0;
  Eye e = e0;
  Mouth m = m0;
  double brow_asym = 0.0;  // extra lowering of one inner brow end (disgust)
  switch (label) {
    case kAngry:
      b.inner_x = 0.1;
      b.inner_y = -0.28 + rng.normal(0, j);  // pulled down to the centre
      b.outer_y = -0.47 + rng.normal(0, j);
      b.arch = 0.0;
      e.open_up = rng.uniform(0.03, 0.05);  // narrowed
      e.open_low = rng.uniform(0.035, 0.05);
      m.half_w = rng.uniform(0.22, 0.3);
      m.lift_left = m.lift_right = -rng.uniform(0.0, 0.06);
      m.lip_thick = rng.uniform(0.07, 0.09);
      if (rng.chance(0.3)) {  // bared teeth
        m.kind = MouthKind::kOpen;
        m.open_top = rng.uniform(0.04, 0.07);
        m.open_bot = rng.uniform(0.05, 0.08);
        m.teeth = 1.0;
      }
      break;
    case kDisgust: {
      f.sneer_side = rng.chance(0.5) ? -1 : 1;
      f.wrinkled_nose = true;
      brow_asym = rng.uniform(0.08, 0.14);
      b.inner_y = -0.4;
      e.open_up = rng.uniform(0.045, 0.065);
      e.open_low = rng.uniform(0.03, 0.05);
      m.half_w = rng.uniform(0.26, 0.32);
      const double up = rng.uniform(0.06, 0.11), down = -rng.uniform(0.03, 0.07);
      m.lift_left = f.sneer_side < 0 ? up : down;
      m.lift_right = f.sneer_side < 0 ? down : up;
      m.cy = 0.53;
      break;
    }
    case kFear:
      b.inner_x = 0.11;                      // pulled together
      b.inner_y = -0.62 + rng.normal(0, j);  // raised, inner ends higher
      b.outer_y = -0.53 + rng.normal(0, j);
      b.arch = 0.01;
      e.open_up = rng.uniform(0.12, 0.15);  // wide
      e.open_low = rng.uniform(0.085, 0.11);
      e.iris_r = 0.065;
      m.kind = MouthKind::kOpen;
      m.half_w = rng.uniform(0.34, 0.42);  // stretched
      m.lift_left = m.lift_right = -rng.uniform(0.02, 0.06);
      m.open_top = rng.uniform(0.04, 0.07);
      m.open_bot = rng.uniform(0.09, 0.14);
      m.teeth = rng.chance(0.5) ? 0.5 : 0.0;
      break;
    case kHappy:
      b.inner_y = b.outer_y = -0.47 + rng.normal(0, j);
      e.open_up = rng.uniform(0.05, 0.07);
      e.open_low = -rng.uniform(0.0, 0.025);  // smiling lower lid
      m.half_w = rng.uniform(0.33, 0.42);
      m.lift_left = m.lift_right = rng.uniform(0.1, 0.18);
      f.smile_folds = rng.chance(0.6);
      if (rng.chance(0.55)) {  // open, teeth showing
        m.kind = MouthKind::kOpen;
        m.open_top = rng.uniform(-0.02, 0.03);
        m.open_bot = rng.uniform(0.12, 0.18);
        m.teeth = 0.45;
      }
      break;
    case kNeutral:
      b.inner_y = b.outer_y = -0.44 + rng.normal(0, j);
      m.half_w = rng.uniform(0.24, 0.32);
      m.lift_left = m.lift_right = rng.uniform(-0.025, 0.025);
      break;
    case kSad:
      b.inner_y = -0.56 + rng.normal(0, j);  // inner corners raised
      b.outer_y = -0.42 + rng.normal(0, j);
      b.arch = -0.01;
      e.open_up = rng.uniform(0.05, 0.065);  // drooping lids
      e.outer_drop = rng.uniform(0.03, 0.06);
      m.half_w = rng.uniform(0.24, 0.3);
      m.lift_left = m.lift_right = -rng.uniform(0.08, 0.14);
      m.cy = 0.6;
      break;
    case kSurprise:
      b.inner_y = -0.64 + rng.normal(0, j);  // high and arched
      b.outer_y = b.inner_y + 0.03;
      b.arch = rng.uniform(0.07, 0.1);
      e.open_up = rng.uniform(0.13, 0.16);
      e.open_low = rng.uniform(0.11, 0.14);
      e.iris_r = 0.065;
      m.kind = MouthKind::kRound;
      m.half_w = rng.uniform(0.12, 0.17);
      m.open_top = rng.uniform(0.14, 0.2);  // vertical half-axis of the O
      m.cy = 0.6;
      break;
    default:
      throw ConfigError(detail::concat("synth label ", label, " out of range [0, 7)"));
  }
  const double u = rng.uniform(), k = 1.0 - 0.55 * u * u;  // intensity in (0.45, 1]
  blend(b0, k, b);
  blend(e0, k, e);
  blend(m0, k, m);
  brow_asym *= k;
  // Per-sample geometry jitter shared by all classes.
  b.inner_y += rng.normal(0, j * 0.5);
  b.outer_x += rng.normal(0, j);
  b.thick *= rng.uniform(0.8, 1.25);
  e.half_w *= rng.uniform(0.9, 1.1);
  m.cy += rng.normal(0, j);
  m.half_w *= rng.uniform(0.92, 1.08);
  f.eye_x = rng.uniform(0.34, 0.42);
  f.eye_y = rng.uniform(-0.22, -0.14);
  for (int s = 0; s < 2; ++s) {
    f.brow[s] = b;
    f.eye[s] = e;
    f.brow[s].inner_y += rng.normal(0, j * 0.4);
    f.brow[s].outer_y += rng.normal(0, j * 0.4);
    f.eye[s].open_up = std::max(0.02, f.eye[s].open_up + rng.normal(0, 0.006));
  }
  if (brow_asym > 0) {  // the brow on the sneer side is lowered
    Brow& low = f.brow[f.sneer_side < 0 ? 0 : 1];
    low.inner_y += brow_asym;
    low.outer_y += brow_asym * 0.3;
  }
  m.lift_left += rng.normal(0, 0.01);
  m.lift_right += rng.normal(0, 0.01);
  f.mouth = m;
  return f;
}

// Maps face units to canvas pixels: centre + scale * rotation, then fixed point (kShift bits).
class Painter {
 public:
  Painter(cv::Mat& canvas, cv::Point2d centre, double scale, double angle_rad)
      : canvas_(canvas),
        centre_(centre),
        scale_(scale),
        cos_(std::cos(angle_rad)),
        sin_(std::sin(angle_rad)) {}

  cv::Point map(cv::Point2d p) const {
    const double x = centre_.x + scale_ * (cos_ * p.x - sin_ * p.y);
    const double y = centre_.y + scale_ * (sin_ * p.x + cos_ * p.y);
    return {static_cast<int>(std::lround(x * (1 << kShift))),
            static_cast<int>(std::lround(y * (1 << kShift)))};
  }
  void fill(const std::vector<cv::Point2d>& poly, double value) {
    std::vector<cv::Point> pts;
    for (const auto& p : poly) pts.push_back(map(p));
    cv::fillPoly(canvas_, std::vector<std::vector<cv::Point>>{pts}, cv::Scalar(value), cv::LINE_AA,
                 kShift);
  }
  void stroke(const std::vector<cv::Point2d>& line, double value, double thick,
              bool closed = false) {
    std::vector<cv::Point> pts;
    for (const auto& p : line) pts.push_back(map(p));
    const int t = std::max(1, static_cast<int>(std::lround(thick * scale_)));
    cv::polylines(canvas_, std::vector<std::vector<cv::Point>>{pts}, closed, cv::Scalar(value), t,
                  cv::LINE_AA, kShift);
  }

 private:
  cv::Mat& canvas_;
  cv::Point2d centre_;
  double scale_, cos_, sin_;
};

std::vector<cv::Point2d> ellipse_pts(cv::Point2d c, double rx, double ry, int n = 48) {
  std::vector<cv::Point2d> pts;
  for (int i = 0; i < n; ++i) {
    const double t = 2.0 * kPi * i / n;
    pts.emplace_back(c.x + rx * std::cos(t), c.y + ry * std::sin(t));
  }
  return pts;
}

// Quadratic Bezier from a to b through `mid` at t = 0.5.
std::vector<cv::Point2d> curve(cv::Point2d a, cv::Point2d mid, cv::Point2d b, int n = 16) {
  const cv::Point2d c = 2.0 * mid - 0.5 * (a + b);
  std::vector<cv::Point2d> pts;
  for (int i = 0; i <= n; ++i) {
    const double t = static_cast<double>(i) / n;
    pts.push_back((1 - t) * (1 - t) * a + 2 * t * (1 - t) * c + t * t * b);
  }
  return pts;
}

void draw_brow(Painter& p, const Brow& b, int side, double value) {
  const double s = side == 0 ? -1.0 : 1.0;
  const cv::Point2d in(s * b.inner_x, b.inner_y), out(s * b.outer_x, b.outer_y);
  const auto mid = curve(in, 0.5 * (in + out) + cv::Point2d(0, -b.arch), out, 12);
  std::vector<cv::Point2d> poly;  // tapered: full thickness inside, 60% at the outer end
  for (size_t i = 0; i < mid.size(); ++i) {
    const double w = b.thick * (1.0 - 0.4 * i / (mid.size() - 1)) * 0.5;
    poly.emplace_back(mid[i].x, mid[i].y - w);
  }
  for (size_t i = mid.size(); i-- > 0;) {
    const double w = b.thick * (1.0 - 0.4 * i / (mid.size() - 1)) * 0.5;
    poly.emplace_back(mid[i].x, mid[i].y + w);
  }
  p.fill(poly, value);
}

void draw_eye(Painter& p, const Face& f, int side, double skin, double dark) {
  const Eye& e = f.eye[side];
  const double s = side == 0 ? -1.0 : 1.0;
  const cv::Point2d c(s * f.eye_x, f.eye_y);
  const cv::Point2d in(c.x - s * e.half_w, c.y), out(c.x + s * e.half_w, c.y + e.outer_drop);
  const cv::Point2d mid = 0.5 * (in + out);
  const auto upper = curve(in, mid + cv::Point2d(0, -e.open_up), out);
  const auto lower = curve(in, mid + cv::Point2d(0, e.open_low), out);
  std::vector<cv::Point2d> poly(upper.begin(), upper.end());
  poly.insert(poly.end(), lower.rbegin(), lower.rend());
  p.fill(poly, std::min(255.0, skin + 45));
  // The iris, clipped to the opening: both lids are parabolas in x (control point at mid x).
  std::vector<cv::Point2d> iris;
  for (const auto& q : ellipse_pts(mid, e.iris_r, e.iris_r, 24)) {
    const double t = std::clamp((q.x - in.x) / (out.x - in.x), 0.0, 1.0);
    const double y_up =
        upper[0].y + (upper.back().y - upper[0].y) * t - 4 * e.open_up * t * (1 - t);
    const double y_lo =
        lower[0].y + (lower.back().y - lower[0].y) * t + 4 * e.open_low * t * (1 - t);
    iris.emplace_back(q.x, std::clamp(q.y, y_up, std::max(y_up, y_lo)));
  }
  p.fill(iris, dark);
  p.stroke(upper, dark, 0.035);
  p.stroke(lower, 0.5 * (skin + dark), 0.02);
}

void draw_mouth(Painter& p, const Mouth& m, double skin) {
  const double lip = skin * 0.62, inside = 25.0, teeth = std::min(255.0, skin + 40);
  const cv::Point2d l(-m.half_w, m.cy - m.lift_left), r(m.half_w, m.cy - m.lift_right);
  if (m.kind == MouthKind::kRound) {
    const auto o = ellipse_pts({0, m.cy}, m.half_w, m.open_top, 36);
    p.fill(o, inside);
    p.stroke(o, lip, m.lip_thick, /*closed=*/true);
    return;
  }
  // Every lip curve passes through (0, cy): lifted corners bend it into a smile, lowered ones
  // into a frown.
  if (m.kind == MouthKind::kClosed) {
    p.stroke(curve(l, {0, m.cy}, r), lip, m.lip_thick);
    p.stroke(curve(l, {0, m.cy}, r), skin * 0.3, 0.025);
    return;
  }
  const auto upper = curve(l, {0, m.cy - m.open_top}, r);
  const auto lower = curve(l, {0, m.cy + m.open_bot}, r);
  std::vector<cv::Point2d> poly(upper.begin(), upper.end());
  poly.insert(poly.end(), lower.rbegin(), lower.rend());
  p.fill(poly, inside);
  if (m.teeth > 0) {  // a band under the upper lip, never below the lower lip
    std::vector<cv::Point2d> band(upper.begin(), upper.end());
    const double depth = m.teeth * (m.open_top + m.open_bot);
    for (size_t i = upper.size(); i-- > 0;) {
      band.emplace_back(upper[i].x, std::min(upper[i].y + depth, lower[i].y));
    }
    p.fill(band, teeth);
  }
  p.stroke(poly, lip, m.lip_thick * 0.8, /*closed=*/true);
}

void draw_face(cv::Mat& canvas, const Face& f, Rng& rng) {
  const double n = canvas.cols;
  const double skin = rng.uniform(115, 225);
  const double scale = n * 0.33 * rng.uniform(0.86, 1.08);
  const double aspect = rng.uniform(1.15, 1.38);
  const double max_shift = 0.07 * n;
  const cv::Point2d centre(n * 0.5 + rng.uniform(-max_shift, max_shift),
                           n * 0.53 + rng.uniform(-max_shift, max_shift));
  Painter p(canvas, centre, scale, rng.normal(0, 7.0) * kPi / 180.0);

  p.fill({{-0.55, 0.6}, {0.55, 0.6}, {0.62, 3.0}, {-0.62, 3.0}}, skin * rng.uniform(0.7, 0.9));
  const bool hair = rng.chance(0.75);
  const double hair_value = rng.uniform(10, 200);
  if (hair) p.fill(ellipse_pts({0, -0.12}, 1.1, aspect * 1.02), hair_value);
  p.fill(ellipse_pts({0, 0}, 1.0, aspect), skin);
  if (hair) {  // the fringe: the hair ellipse above a random hairline
    const double hairline = rng.uniform(-1.05, -0.72) * aspect * 0.8;
    auto cap = ellipse_pts({0, -0.12}, 1.1, aspect * 1.02);
    for (auto& q : cap) q.y = std::min(q.y, hairline + 0.08 * q.x * q.x);
    p.fill(cap, hair_value);
  }

  // Nose: a faint bridge and base.
  const double nose = skin * 0.72;
  p.stroke({{0.03, -0.05}, {0.05, 0.22}}, skin * 0.85, 0.025);
  p.stroke(curve({-0.1, 0.3}, {0, 0.34}, {0.1, 0.3}), nose, 0.035);
  if (f.wrinkled_nose) {
    for (int k = 0; k < 2; ++k) {
      for (double s : {-1.0, 1.0}) {
        p.stroke({{s * 0.05, -0.04 + 0.07 * k}, {s * 0.15, 0.0 + 0.07 * k}}, skin * 0.55, 0.03);
      }
    }
  }
  if (f.sneer_side != 0) {  // the nasolabial fold of the raised upper lip
    const double s = f.sneer_side;
    p.stroke(curve({s * 0.13, 0.28}, {s * 0.27, 0.36}, {s * 0.33, 0.5}), skin * 0.55, 0.04);
  }
  if (f.smile_folds) {
    for (double s : {-1.0, 1.0}) {
      p.stroke(curve({s * 0.18, 0.3}, {s * 0.4, 0.42}, {s * 0.46, 0.62}), skin * 0.7, 0.035);
    }
  }
  const double brow = skin * rng.uniform(0.2, 0.45);
  const double dark = skin * rng.uniform(0.12, 0.3);
  for (int s = 0; s < 2; ++s) {
    draw_brow(p, f.brow[s], s, brow);
    draw_eye(p, f, s, skin, dark);
  }
  draw_mouth(p, f.mouth, skin);
}

// Lighting gradient, contrast, blur and sensor noise, at the final resolution.
cv::Mat finish(const cv::Mat& drawn, int size, Rng& rng) {
  cv::Mat img;
  cv::resize(drawn, img, cv::Size(size, size), 0, 0, cv::INTER_AREA);
  img.convertTo(img, CV_32F);
  const double theta = rng.uniform(0, 2 * kPi), gain = rng.uniform(0.0, 0.45);
  const double contrast = rng.uniform(0.75, 1.1);
  const double gx = std::cos(theta) * gain, gy = std::sin(theta) * gain;
  for (int y = 0; y < size; ++y) {
    float* row = img.ptr<float>(y);
    for (int x = 0; x < size; ++x) {
      const double u = 2.0 * x / (size - 1) - 1, v = 2.0 * y / (size - 1) - 1;
      row[x] = static_cast<float>((row[x] - 128.0) * contrast + 128.0 + 80.0 * (gx * u + gy * v));
    }
  }
  if (rng.chance(0.7)) {
    const double sigma = rng.uniform(0.3, 0.9) * size / 48.0;
    cv::GaussianBlur(img, img, cv::Size(0, 0), sigma, sigma, cv::BORDER_REFLECT);
  }
  const double noise = rng.uniform(2.0, 9.0);
  for (int y = 0; y < size; ++y) {
    float* row = img.ptr<float>(y);
    for (int x = 0; x < size; ++x) row[x] += static_cast<float>(noise * rng.normal());
  }
  cv::Mat out;
  img.convertTo(out, CV_8U);  // rounds and saturates
  return out;
}

void validate(const SynthOptions& o) {
  if (o.per_class < 1 || o.per_class > kMaxPerClass) {
    throw ConfigError(
        detail::concat("--per-class must be in [1, ", kMaxPerClass, "], got ", o.per_class));
  }
  if (o.size < kMinSize || o.size > kMaxSize) {
    throw ConfigError(
        detail::concat("--size must be in [", kMinSize, ", ", kMaxSize, "], got ", o.size));
  }
  if (o.layout != "split" && o.layout != "flat") {
    throw ConfigError("unknown --layout '" + o.layout + "'", "use split or flat");
  }
  if (o.threads < 0) throw ConfigError(detail::concat("--threads must be >= 0, got ", o.threads));
}

struct Job {
  int label;
  int index;
  fs::path file;  // relative to the output folder
};

// Per class: the first 80% of the indices are train, the next 10% val, the rest test (val and test
// get at least one image each once a class has 3).
std::vector<Job> plan_jobs(const SynthOptions& o) {
  const int n = o.per_class;
  const int held_out = n >= 3 ? std::max(1, n / 10) : 0;
  const int n_train = n - 2 * held_out;
  std::vector<Job> jobs;
  const auto& names = synth_class_names();
  for (int label = 0; label < static_cast<int>(names.size()); ++label) {
    for (int i = 0; i < n; ++i) {
      char file[32];
      std::snprintf(file, sizeof file, "%06d.png", i);
      fs::path dir = names[label];
      if (o.layout == "split") {
        dir = fs::path(i < n_train ? "train" : i < n_train + held_out ? "val" : "test") / dir;
      }
      jobs.push_back({label, i, dir / file});
    }
  }
  return jobs;
}

}  // namespace

const std::vector<std::string>& synth_class_names() {
  static const std::vector<std::string> kNames = {"angry",   "disgust", "fear",    "happy",
                                                  "neutral", "sad",     "surprise"};
  return kNames;
}

cv::Mat draw_synth_face(int label, std::uint64_t seed, std::uint64_t index, int size) {
  if (size < kMinSize || size > kMaxSize) {
    throw ConfigError(
        detail::concat("synth image size must be in [", kMinSize, ", ", kMaxSize, "], got ", size));
  }
  std::uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ (static_cast<std::uint64_t>(label) + 1) * 0xd1b54a32d192ed03ULL);
  h = splitmix64(h ^ index);
  Rng rng(h);
  const Face face = draw_expression(label, rng);
  // Draw supersampled (about 192 px) with anti-aliasing, then area-downsample: smooth edges
  // at 48 px without depending on OpenCV's sub-pixel rendering at tiny sizes.
  const int ss = std::clamp((192 + size - 1) / size, 1, 4);
  cv::Mat canvas(size * ss, size * ss, CV_8UC1, cv::Scalar(rng.uniform(15, 235)));
  draw_face(canvas, face, rng);
  return finish(canvas, size, rng);
}

void write_synth_dataset(const fs::path& out, const SynthOptions& options) {
  validate(options);
  std::error_code ec;
  if (fs::exists(fs::symlink_status(out, ec)) && !options.overwrite) {
    throw IoError(out.string() + " already exists", "pass --overwrite to replace it");
  }
  const std::vector<Job> jobs = plan_jobs(options);
  ScopedTempDir tmp(out);
  for (const auto& job : jobs) {
    fs::create_directories(tmp.path() / job.file.parent_path(), ec);
    if (ec) {
      throw IoError("cannot create " + (tmp.path() / job.file.parent_path()).string() + ": " +
                    ec.message());
    }
  }
  int threads = options.threads;
  if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = std::min<int>(threads, static_cast<int>(jobs.size()));

  // Each file is a pure function of its job, so any thread may write any file: the output is
  // byte-identical for every thread count.
  std::atomic<size_t> next{0}, done{0};
  std::atomic<bool> stop{false};
  std::exception_ptr error;
  std::mutex mutex;  // guards error and the progress clock
  const auto start = std::chrono::steady_clock::now();
  auto last_log = start;
  auto worker = [&] {
    try {
      for (size_t k = next++; k < jobs.size() && !stop; k = next++) {
        throw_if_cancelled();
        const Job& job = jobs[k];
        const cv::Mat img = draw_synth_face(job.label, options.seed, job.index, options.size);
        const fs::path file = tmp.path() / job.file;
        bool ok = false;
        try {
          ok = cv::imwrite(file.string(), img);
        } catch (const cv::Exception& e) {
          throw IoError("cannot write " + file.string() + ": " + e.what());
        }
        if (!ok) throw IoError("cannot write " + file.string(), "check free disk space");
        const size_t finished = ++done;
        const auto now = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lock(mutex);
        if (std::chrono::duration<double>(now - last_log).count() >= kProgressPeriodS) {
          last_log = now;
          spdlog::info("fer-synth: {}/{} images", finished, jobs.size());
        }
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!error) error = std::current_exception();
      stop = true;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  throw_if_cancelled();
  tmp.commit(out, options.overwrite);
  spdlog::info(
      "fer-synth: wrote {} images ({} classes, {} per class, {} px, layout {}) to {} "
      "in {:.1f} s",
      jobs.size(), synth_class_names().size(), options.per_class, options.size, options.layout,
      out.string(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

}  // namespace fer::tools
