// fer-predict: facial expressions of the faces in pictures, from a fer-dist-train checkpoint (see
// --help). Flags and output formatting only; the work is in src/predict.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "common/errors.h"
#include "common/logging.h"
#include "predict/predictor.h"

using namespace fer;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kExitCodes =
    "Exit codes:\n"
    "  0  every picture was read (pictures without a face included)\n"
    "  2  usage (bad flags, no face detector cascade)\n"
    "  3  a picture is missing or could not be read or decoded (named on stderr; the others\n"
    "     were still processed and printed)\n"
    "  4  I/O error writing --annotate pictures\n"
    "  6  the checkpoint cannot be read\n";

constexpr const char* kNoFace = "no face found";

json result_json(const ImageResult& r, std::size_t face) {
  const FacePrediction& f = r.faces[face];
  json top = json::array();
  for (const auto& s : f.top) top.push_back({{"label", s.label}, {"probability", s.probability}});
  return {
      {"image", r.path.string()},
      {"status", "ok"},
      {"face", face},
      {"box", {{"x", f.box.x}, {"y", f.box.y}, {"width", f.box.width}, {"height", f.box.height}}},
      {"top_k", top}};
}

void print_table(const ImageResult& r, bool detect) {
  std::printf("%s (%dx%d)\n", r.path.c_str(), r.width, r.height);
  if (r.faces.empty()) {
    std::printf("  %s%s\n", kNoFace, detect ? " (--no-detect classifies the whole picture)" : "");
  }
  for (std::size_t i = 0; i < r.faces.size(); ++i) {
    const FacePrediction& f = r.faces[i];
    std::printf("  face %zu  box x=%d y=%d w=%d h=%d  ", i + 1, f.box.x, f.box.y, f.box.width,
                f.box.height);
    for (const auto& s : f.top) std::printf("  %-9s %5.1f%%", s.label.c_str(), 100 * s.probability);
    std::printf("\n");
  }
}

// A file name in `dir` for the annotated copy of `source`, unique within this run.
fs::path annotated_name(const fs::path& dir, const fs::path& source,
                        std::map<std::string, int>* used) {
  const std::string stem = source.stem().string();
  const int n = ++(*used)[stem];
  return dir / (n == 1 ? stem + ".png" : stem + "-" + std::to_string(n) + ".png");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fer-predict: the facial expression of every face in pictures, with a "
      "fer-dist-train checkpoint"};
  app.footer(std::string("\nExamples:\n"
                         "  fer-predict --checkpoint runs/demo/checkpoints/best.pt photo.jpg\n"
                         "  fer-predict --checkpoint best.pt --json --top-k 2 photos/\n"
                         "  fer-predict --checkpoint best.pt --annotate out/ group.jpg\n"
                         "  fer-predict --checkpoint best.pt --no-detect face_crop.png\n\n") +
             kExitCodes);
  PredictOptions options;
  std::vector<std::string> inputs;
  std::string annotate_dir;
  bool json_lines = false;
  app.add_option("--checkpoint", options.checkpoint, "fer-dist-train checkpoint (.pt)")->required();
  app.add_flag("--detect-faces,!--no-detect", options.detect_faces,
               "find faces with the Haar cascade (default), or classify each whole picture");
  app.add_option("--cascade", options.cascade, "OpenCV Haar cascade XML")->capture_default_str();
  app.add_option("--top-k", options.top_k, "emotions listed per face")->capture_default_str();
  app.add_option("--margin", options.margin, "added around each detected box, fraction of its side")
      ->capture_default_str();
  app.add_option("--min-face", options.min_face, "smallest face to detect, pixels")
      ->capture_default_str();
  app.add_option("--annotate", annotate_dir,
                 "write copies with boxes and labels drawn to this folder (PNG)");
  app.add_flag("--json", json_lines, "one JSON object per face (per picture without a face)");
  app.add_option("--batch-size", options.batch_size, "faces per forward pass")
      ->capture_default_str();
  app.add_option("--device", options.device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  app.add_option("IMAGE_OR_DIR", inputs, "pictures, or folders searched for them")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ExitCode::kUsage);
  }

  try {
    LogOptions log_options;
    log_options.level = "warn";
    init_logging(log_options);
    const std::vector<fs::path> images = collect_images(inputs);
    if (images.empty()) throw DataError("no pictures found in the given folders");
    Predictor predictor(options);
    const std::vector<ImageResult> results = predictor.predict(images);
    if (!annotate_dir.empty()) {
      std::error_code ec;
      fs::create_directories(annotate_dir, ec);
      if (ec) throw IoError("cannot create " + annotate_dir + ": " + ec.message());
    }
    std::map<std::string, int> used_names;
    int failed = 0;
    for (const ImageResult& r : results) {
      if (!r.ok) {
        ++failed;
        std::fprintf(stderr, "fer-predict: error: %s: %s\n", r.path.c_str(), r.error.c_str());
        if (json_lines) {
          std::printf("%s\n",
                      json{{"image", r.path.string()}, {"status", "error"}, {"error", r.error}}
                          .dump()
                          .c_str());
        }
        continue;
      }
      if (json_lines) {
        if (r.faces.empty()) {
          std::printf("%s\n",
                      json{{"image", r.path.string()}, {"status", "no_face"}, {"message", kNoFace}}
                          .dump()
                          .c_str());
        }
        for (std::size_t i = 0; i < r.faces.size(); ++i) {
          std::printf("%s\n", result_json(r, i).dump().c_str());
        }
      } else {
        print_table(r, options.detect_faces);
      }
      if (!annotate_dir.empty())
        write_annotated(r, annotated_name(annotate_dir, r.path, &used_names));
    }
    std::fflush(stdout);
    if (failed > 0) {
      std::fprintf(stderr, "fer-predict: %d of %zu picture(s) could not be read\n", failed,
                   results.size());
      return static_cast<int>(ExitCode::kData);
    }
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "fer-predict: error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "  hint: %s\n", e.hint().c_str());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fer-predict: internal error: %s\n", e.what());
    return static_cast<int>(ExitCode::kFailure);
  }
}
