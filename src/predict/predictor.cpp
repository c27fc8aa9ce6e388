#include "predict/predictor.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <opencv2/core/utility.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/objdetect.hpp>

#include "common/errors.h"
#include "common/fs_util.h"
#include "common/logging.h"
#include "data/augment.h"
#include "image/image_io.h"
#include "model/resnet9.h"
#include "model/tta.h"
#include "predict/fused_resnet9.h"
#include "train/checkpoint.h"
#include "train/device.h"

namespace fer {
namespace {

namespace fs = std::filesystem;

constexpr int kMinNeighbors = 5;  // overlapping hits a face needs: fewer false positives

// The square around `box` grown by `margin` of its side on every side; parts outside the image
// are filled by repeating the border pixels so the face stays centred.
cv::Mat crop_with_margin(const cv::Mat& image, const cv::Rect& box, double margin) {
  const int grow_x = static_cast<int>(std::lround(box.width * margin));
  const int grow_y = static_cast<int>(std::lround(box.height * margin));
  const cv::Rect want(box.x - grow_x, box.y - grow_y, box.width + 2 * grow_x,
                      box.height + 2 * grow_y);
  const cv::Rect inside = want & cv::Rect(0, 0, image.cols, image.rows);
  cv::Mat crop;
  cv::copyMakeBorder(image(inside), crop, inside.y - want.y,
                     want.y + want.height - (inside.y + inside.height), inside.x - want.x,
                     want.x + want.width - (inside.x + inside.width), cv::BORDER_REPLICATE);
  return crop;
}

}  // namespace

struct Predictor::State {
  PredictOptions options;
  CheckpointMeta meta;
  ResNet9 model{nullptr};
  std::unique_ptr<FusedResNet9> fused;  // the CPU's faster forward; null: the module's
  torch::Device device{torch::kCPU};
  Tta tta = Tta::kNone;
  cv::CascadeClassifier cascade;
  std::unique_ptr<Normalizer> normalizer;
};

Predictor::Predictor(const PredictOptions& options) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.options = options;
  FER_CHECK(options.top_k >= 1, ConfigError, "--top-k must be at least 1, got ", options.top_k);
  FER_CHECK(options.margin >= 0 && options.margin <= 2, ConfigError,
            "--margin must be in [0, 2], got ", options.margin);
  FER_CHECK(options.batch_size >= 1, ConfigError, "--batch-size must be at least 1");
  FER_CHECK(options.min_face >= 8, ConfigError, "--min-face must be at least 8 pixels");
  FER_CHECK(options.threads >= 0, ConfigError, "--threads must be at least 0, got ",
            options.threads);
  s.tta = parse_tta(options.tta);
  if (options.threads > 0) set_compute_threads(options.threads, options.threads);
  if (options.detect_faces) {
    if (!fs::exists(options.cascade) || !s.cascade.load(options.cascade.string())) {
      throw ConfigError("cannot load the face detector cascade " + options.cascade.string(),
                        "install Debian's opencv-data (launch/install-deps.sh), pass --cascade "
                        "XML, or classify whole images with --no-detect");
    }
  }
  s.model = load_checkpoint_model(options.checkpoint, &s.meta);
  FER_CHECK(s.meta.channels == 1 || s.meta.channels == 3, CheckpointError,
            options.checkpoint.string(), ": unsupported channel count ", s.meta.channels);
  FER_CHECK(s.meta.classes.size() > 0 && s.meta.height > 0 && s.meta.width > 0, CheckpointError,
            options.checkpoint.string(), ": no classes or image shape in the checkpoint");
  s.normalizer =
      std::make_unique<Normalizer>(s.meta.channels, s.meta.mean.data(), s.meta.std.data());
  s.device = torch::Device(resolve_device_name(options.device));
  s.model->to(s.device);
  s.model->eval();
  if (s.device.is_cpu()) {
    std::string reason;
    s.fused = FusedResNet9::build(s.model, &reason);
    if (!s.fused) spdlog::warn("fused forward pass off ({}): using the model's own", reason);
  }
}

Predictor::~Predictor() = default;

const std::vector<std::string>& Predictor::classes() const { return state_->meta.classes; }

const char* Predictor::tta_name() const { return to_string(state_->tta); }

cv::Mat Predictor::from_bgr(const cv::Mat& bgr) const {
  FER_CHECK(bgr.type() == CV_8UC3, DataError, "expected an 8-bit BGR frame, got OpenCV type ",
            bgr.type());
  cv::Mat out;
  // COLOR_BGR2GRAY uses the ITU-R 601 weights, like fer-pack's decoder (decode_to_channels).
  cv::cvtColor(bgr, out, state_->meta.channels == 1 ? cv::COLOR_BGR2GRAY : cv::COLOR_BGR2RGB);
  return out;
}

std::vector<FaceBox> Predictor::detect(const cv::Mat& image, const DetectScan& scan) {
  State& s = *state_;
  if (!s.options.detect_faces) return {FaceBox{0, 0, image.cols, image.rows}};
  // No equalizeHist (OpenCV's sample uses it): on textured backgrounds it produced more false and
  // missed faces in our measurements (fer-synth faces pasted on noise + lines).
  cv::Mat gray;
  if (image.channels() == 1) {
    gray = image;
  } else {
    cv::cvtColor(image, gray, cv::COLOR_RGB2GRAY);
  }
  double scale = 1.0;
  FER_CHECK(scan.scale_step > 1.0 && scan.max_width >= 0, ConfigError,
            "face detection needs a scale step above 1 and a width of at least 0");
  if (scan.max_width > 0 && gray.cols > scan.max_width) {
    scale = static_cast<double>(scan.max_width) / gray.cols;
    cv::Mat small;
    cv::resize(gray, small, cv::Size(), scale, scale, cv::INTER_AREA);
    gray = small;
  }
  const int min_side = std::max(1, static_cast<int>(std::lround(s.options.min_face * scale)));
  std::vector<cv::Rect> boxes;
  s.cascade.detectMultiScale(gray, boxes, scan.scale_step, kMinNeighbors, 0,
                             cv::Size(min_side, min_side));
  // Reading order, so the face numbers are stable and predictable.
  std::sort(boxes.begin(), boxes.end(), [](const cv::Rect& a, const cv::Rect& b) {
    return std::make_pair(a.y, a.x) < std::make_pair(b.y, b.x);
  });
  std::vector<FaceBox> out;
  out.reserve(boxes.size());
  for (const cv::Rect& b : boxes) {
    const auto px = [&](int v) { return static_cast<int>(std::lround(v / scale)); };
    out.push_back({px(b.x), px(b.y), px(b.width), px(b.height)});
  }
  return out;
}

std::size_t Predictor::face_floats() const {
  const CheckpointMeta& m = state_->meta;
  return static_cast<std::size_t>(m.channels) * m.height * m.width;
}

void Predictor::prepare(const cv::Mat& image, const FaceBox& box, float* out) const {
  const State& s = *state_;
  const double margin = s.options.detect_faces ? s.options.margin : 0.0;
  const cv::Rect rect(box.x, box.y, box.width, box.height);
  // Continuous HWC bytes for the normalizer (a resize to the same size returns a view).
  const cv::Mat face =
      resize_like_pack(crop_with_margin(image, rect, margin), s.meta.width, s.meta.height).clone();
  s.normalizer->apply(face.ptr<std::uint8_t>(0), s.meta.height, s.meta.width, out);
}

std::vector<float> Predictor::classify(const float* faces, int n) {
  State& s = *state_;
  const std::int64_t c = s.meta.channels, h = s.meta.height, w = s.meta.width;
  const std::int64_t classes = static_cast<std::int64_t>(s.meta.classes.size());
  std::vector<float> out(static_cast<std::size_t>(n) * classes);
  // Inference mode: no autograd bookkeeping at all (cheaper than NoGradGuard per call).
  c10::InferenceMode inference;
  for (std::int64_t begin = 0; begin < n; begin += s.options.batch_size) {
    const std::int64_t rows = std::min<std::int64_t>(s.options.batch_size, n - begin);
    // from_blob does not copy and never writes: the const_cast only satisfies its signature.
    const torch::Tensor x = torch::from_blob(const_cast<float*>(faces) + begin * c * h * w,
                                             {rows, c, h, w}, torch::kFloat32);
    torch::Tensor probs;
    if (s.tta == Tta::kNone) {
      const torch::Tensor logits = s.fused ? s.fused->forward(x) : s.model->forward(x.to(s.device));
      probs = torch::softmax(logits, 1);
    } else if (s.fused) {
      probs = tta_probs([&s](const torch::Tensor& v) { return s.fused->forward(v); }, x, s.tta,
                        kDefaultTtaPad);
    } else {  // the views are made on the model's device
      probs = tta_probs([&s](const torch::Tensor& v) { return s.model->forward(v); },
                        x.to(s.device), s.tta, kDefaultTtaPad);
    }
    probs = probs.to(torch::kCPU).contiguous();
    std::copy_n(probs.data_ptr<float>(), rows * classes, out.data() + begin * classes);
  }
  return out;
}

std::vector<ImageResult> Predictor::predict(const std::vector<fs::path>& images) {
  State& s = *state_;
  const std::size_t face_size = face_floats();
  const std::size_t classes = s.meta.classes.size();
  const int k = std::min<int>(s.options.top_k, static_cast<int>(classes));
  std::vector<ImageResult> results(images.size());
  std::vector<float> batch;
  std::vector<std::pair<std::size_t, std::size_t>> owners;  // (image, face) of each batch row

  auto flush = [&] {
    if (owners.empty()) return;
    const std::vector<float> probs = classify(batch.data(), static_cast<int>(owners.size()));
    for (std::size_t row = 0; row < owners.size(); ++row) {
      auto& face = results[owners[row].first].faces[owners[row].second];
      face.top = top_scores(probs.data() + row * classes, s.meta.classes, k);
    }
    batch.clear();
    owners.clear();
  };

  for (std::size_t i = 0; i < images.size(); ++i) {
    ImageResult& result = results[i];
    result.path = images[i];
    std::string bytes;
    try {
      bytes = read_file(images[i]);
    } catch (const Error& e) {
      result.error = e.what();
      continue;
    }
    const cv::Mat image = decode_to_channels(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                             bytes.size(), s.meta.channels, &result.error);
    if (image.empty()) continue;
    result.ok = true;
    result.width = image.cols;
    result.height = image.rows;
    for (const FaceBox& box : detect(image)) {
      batch.resize(batch.size() + face_size);
      prepare(image, box, batch.data() + batch.size() - face_size);
      owners.emplace_back(i, result.faces.size());
      result.faces.push_back({box, {}});
      if (static_cast<int>(owners.size()) == s.options.batch_size) flush();
    }
  }
  flush();
  return results;
}

void set_compute_threads(int torch_threads, int opencv_threads) {
  torch::set_num_threads(std::max(1, torch_threads));
  cv::setNumThreads(std::max(1, opencv_threads));
}

std::vector<ClassScore> top_scores(const float* probabilities,
                                   const std::vector<std::string>& labels, int k) {
  const int n = static_cast<int>(labels.size());
  k = std::clamp(k, 0, n);
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  // Best first; equal probabilities in class order, so the output is deterministic.
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
    return probabilities[a] != probabilities[b] ? probabilities[a] > probabilities[b] : a < b;
  });
  std::vector<ClassScore> out;
  out.reserve(k);
  for (int j = 0; j < k; ++j) {
    out.push_back({labels[order[j]], static_cast<double>(probabilities[order[j]])});
  }
  return out;
}

std::vector<fs::path> collect_images(const std::vector<std::string>& arguments) {
  std::vector<fs::path> out;
  for (const auto& arg : arguments) {
    const fs::path path(arg);
    std::error_code ec;
    if (!fs::is_directory(path, ec)) {  // a missing file is reported by predict() like a bad one
      out.push_back(path);
      continue;
    }
    std::vector<fs::path> found;
    fs::recursive_directory_iterator it(path, fs::directory_options::skip_permission_denied, ec);
    FER_CHECK(!ec, IoError, "cannot list ", arg, ": ", ec.message());
    for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) throw IoError("cannot list " + arg + ": " + ec.message());
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {
        if (it->is_directory(ec)) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(ec) && has_image_extension(it->path())) {
        found.push_back(it->path());
      }
    }
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

void write_annotated(const ImageResult& result, const fs::path& out) {
  cv::Mat image = cv::imread(result.path.string(), cv::IMREAD_COLOR);
  FER_CHECK(!image.empty(), DataError, "cannot decode ", result.path.string(), " to annotate it");
  const int side = std::min(image.cols, image.rows);
  const int thickness = std::max(1, side / 250);
  const double scale = std::clamp(side / 700.0, 0.4, 1.5);
  const cv::Scalar box_color(60, 200, 60), text_color(255, 255, 255);
  auto label = [&](const std::string& text, cv::Point at) {
    int baseline = 0;
    const cv::Size size =
        cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, scale, thickness, &baseline);
    // Above the box when there is room, else inside its top edge.
    const int top =
        at.y - size.height - baseline - 6 >= 0 ? at.y - size.height - baseline - 6 : at.y;
    cv::rectangle(image, {at.x, top}, {at.x + size.width + 6, top + size.height + baseline + 6},
                  box_color, cv::FILLED);
    cv::putText(image, text, {at.x + 3, top + size.height + 3}, cv::FONT_HERSHEY_SIMPLEX, scale,
                text_color, thickness, cv::LINE_AA);
  };
  if (result.faces.empty()) label("no face found", {0, 0});
  for (std::size_t i = 0; i < result.faces.size(); ++i) {
    const FacePrediction& f = result.faces[i];
    const cv::Rect box(f.box.x, f.box.y, f.box.width, f.box.height);
    cv::rectangle(image, box, box_color, thickness + 1);
    if (f.top.empty()) continue;
    char text[128];
    std::snprintf(text, sizeof text, "%zu: %s %.0f%%", i + 1, f.top[0].label.c_str(),
                  100.0 * f.top[0].probability);
    label(text, {box.x, box.y});
  }
  std::vector<std::uint8_t> png;
  FER_CHECK(cv::imencode(".png", image, png), IoError, "cannot encode ", out.string());
  write_file_atomic(out, std::string(png.begin(), png.end()));
}

}  // namespace fer
