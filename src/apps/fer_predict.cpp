// fer-predict: facial expressions of the faces in pictures, videos and camera streams, from a
// fer-dist-train checkpoint (see --help). Flags and output formatting only; the work is in
// src/predict.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/allocator.h"
#include "common/cancel.h"
#include "common/errors.h"
#include "common/logging.h"
#include "predict/predictor.h"
#include "predict/video.h"
#include "predict/video_output.h"

using namespace fer;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kExitCodes =
    "Exit codes:\n"
    "  0    every input was read (inputs without a face included); a camera stream ended by\n"
    "       Ctrl-C\n"
    "  2    usage (bad flags, no face detector cascade)\n"
    "  3    a picture or video is missing or could not be read or decoded, a video is empty or\n"
    "       truncated, a camera does not open, a video has a variable frame rate and\n"
    "       --accept-vfr was not given (each named on stderr; the others were still processed\n"
    "       and printed, a variable-rate video in full)\n"
    "  4    I/O error writing --annotate or --timeline-png outputs\n"
    "  6    the checkpoint cannot be read\n"
    "  130  Ctrl-C during a video file: its outputs are finished with the frames processed so\n"
    "       far, later inputs are skipped\n";

constexpr const char* kNoFace = "no face found";

json box_json(const FaceBox& b) {
  return {{"x", b.x}, {"y", b.y}, {"width", b.width}, {"height", b.height}};
}

// Probabilities to 6 decimals: float precision, and JSON lines a third shorter.
json top_json(const std::vector<ClassScore>& top) {
  json out = json::array();
  for (const auto& s : top) {
    out.push_back({{"label", s.label}, {"probability", std::round(s.probability * 1e6) / 1e6}});
  }
  return out;
}

json result_json(const ImageResult& r, std::size_t face, const char* tta) {
  const FacePrediction& f = r.faces[face];
  return {{"image", r.path.string()}, {"status", "ok"},           {"face", face},
          {"box", box_json(f.box)},   {"top_k", top_json(f.top)}, {"tta", tta}};
}

void print_json(const json& j) { std::printf("%s\n", j.dump().c_str()); }

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

// A file name in `dir` for an output made from `stem`, unique within this run per extension.
fs::path unique_name(const fs::path& dir, const std::string& stem, const std::string& ext,
                     std::map<std::string, int>* used) {
  const int n = ++(*used)[stem + ext];
  return dir / (n == 1 ? stem + ext : stem + "-" + std::to_string(n) + ext);
}

void create_folder(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw IoError("cannot create " + dir.string() + ": " + ec.message());
}

// Microsecond resolution is more than any frame rate needs and keeps the JSON lines short.
double rounded_time(double t) { return std::round(t * 1e6) / 1e6; }

struct CliOptions {
  PredictOptions predict;
  VideoOptions video;
  std::vector<std::string> inputs;  // pictures, folders of pictures, video files
  std::vector<int> cameras;         // --camera
  std::string annotate;             // folder, or one video file name
  std::string timeline_dir;         // --timeline-png
  bool json_lines = false;
  bool stats = false;
  bool accept_vfr = false;  // --accept-vfr: a variable frame rate is a note, not exit code 3
};

// Everything written for one video source while it is processed: JSON lines, the annotated video
// and the timeline's data.
class VideoOutputs : public FrameObserver {
 public:
  VideoOutputs(const CliOptions& cli, const std::vector<std::string>& classes, fs::path annotate)
      : cli_(cli), classes_(classes), annotate_path_(std::move(annotate)), timeline_(classes) {}

  void on_open(const VideoSource& source, const SourceInfo& info) override {
    name_ = source.name();
    if (!annotate_path_.empty()) {
      writer_ = std::make_unique<AnnotatedVideoWriter>(annotate_path_, info.fps,
                                                       cv::Size(info.width, info.height));
    }
  }

  void on_frame(const VideoFrame& frame) override {
    const int k = std::min<int>(cli_.predict.top_k, static_cast<int>(classes_.size()));
    if (cli_.json_lines) {
      for (const VideoFace& face : frame.faces) {
        print_json({{"source", name_},
                    {"frame", frame.index},
                    {"time_s", rounded_time(frame.time_s)},
                    {"track", face.tracked.track},
                    {"detected", face.tracked.detected},
                    {"box", box_json(face.tracked.box)},
                    {"top_k", top_json(top_scores(face.probabilities.data(), classes_, k))},
                    {"smoothed_top_k", top_json(top_scores(face.smoothed.data(), classes_, k))}});
      }
      std::fflush(stdout);  // camera streams: a reader of the pipe sees each frame at once
    }
    if (writer_) {
      cv::Mat canvas = frame.bgr;  // the pipeline is done with these pixels: drawn in place
      draw_video_annotations(canvas, frame, classes_);
      writer_->write(canvas);
    }
    if (!cli_.timeline_dir.empty()) timeline_.add(frame);
  }

  bool needs_pixels() const override { return writer_ != nullptr; }

  // Renames the annotated video into place when it has frames (else it is removed).
  void finish_annotated() {
    if (writer_ && writer_->frames() > 0) {
      writer_->finish();
      annotated_written_ = true;
    }
    writer_.reset();
  }
  bool annotated_written() const { return annotated_written_; }
  const TimelineRecorder& timeline() const { return timeline_; }

 private:
  const CliOptions& cli_;
  const std::vector<std::string>& classes_;
  fs::path annotate_path_;
  std::string name_;
  std::unique_ptr<AnnotatedVideoWriter> writer_;
  bool annotated_written_ = false;
  TimelineRecorder timeline_;
};

void print_video_summary(const VideoResult& r, const std::vector<std::string>& classes,
                         bool json_lines, const char* tta) {
  if (json_lines) {
    for (const TrackSummary& t : r.tracks) {
      json share = json::object();
      for (std::size_t c = 0; c < classes.size(); ++c) share[classes[c]] = t.share[c];
      print_json({{"source", r.source},
                  {"track", t.track},
                  {"summary",
                   {{"first_s", rounded_time(t.first_s)},
                    {"last_s", rounded_time(t.last_s)},
                    {"frames", t.frames},
                    {"dominant", classes[t.dominant]},
                    {"share", share}}}});
    }
    json end = {{"source", r.source},
                {"status", !r.error.empty() ? "error"
                           : r.interrupted  ? "interrupted"
                                            : "ok"},
                {"frames", r.frames},
                {"tracks", r.tracks.size()},
                {"width", r.info.width},
                {"height", r.info.height},
                {"fps", r.info.fps},
                {"variable_frame_rate", r.variable_rate},
                {"tta", tta}};
    if (!r.error.empty()) end["error"] = r.error;
    print_json(end);
    return;
  }
  const std::string tta_note = std::string(tta) == "none" ? "" : std::string(", TTA ") + tta;
  std::printf("%s (%dx%d, %.2f fps%s): %lld frame(s)%s, %zu track(s)\n", r.source.c_str(),
              r.info.width, r.info.height, r.info.fps, tta_note.c_str(),
              static_cast<long long>(r.frames), r.interrupted ? " (interrupted)" : "",
              r.tracks.size());
  if (r.frames > 0 && r.tracks.empty()) std::printf("  %s\n", kNoFace);
  for (const TrackSummary& t : r.tracks) {
    std::printf("  track %d  %.2f-%.2f s  %lld frame(s)  %-9s", t.track, t.first_s, t.last_s,
                static_cast<long long>(t.frames), classes[t.dominant].c_str());
    std::vector<std::size_t> order(classes.size());
    for (std::size_t c = 0; c < order.size(); ++c) order[c] = c;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return t.share[a] > t.share[b]; });
    for (const std::size_t c : order) {
      if (t.share[c] > 0) std::printf("  %s %.1f%%", classes[c].c_str(), 100 * t.share[c]);
    }
    std::printf("\n");
  }
}

void print_stats(const VideoResult& r) {
  const VideoStats& s = r.stats;
  const double n = std::max<double>(1, static_cast<double>(s.frames));
  const double fps = s.wall_s > 0 ? static_cast<double>(s.frames) / s.wall_s : 0;
  std::fprintf(
      stderr,
      "fer-predict: stats: %s frames=%lld wall_s=%.3f fps=%.2f video_fps=%.2f "
      "realtime=%.2f cpu_ms=%.2f decode_ms=%.2f wait_ms=%.2f detect_ms=%.2f prepare_ms=%.2f "
      "infer_ms=%.2f output_ms=%.2f detect_cpu_ms=%.2f infer_cpu_ms=%.2f faces=%lld "
      "batches=%lld detections=%lld\n",
      r.source.c_str(), static_cast<long long>(s.frames), s.wall_s, fps, r.info.fps,
      r.info.fps > 0 ? fps / r.info.fps : 0.0, 1e3 * s.cpu_s / n, 1e3 * s.decode_s / n,
      1e3 * s.wait_s / n, 1e3 * s.detect_s / n, 1e3 * s.prepare_s / n, 1e3 * s.infer_s / n,
      1e3 * s.output_s / n, 1e3 * s.detect_cpu_s / n, 1e3 * s.infer_cpu_s / n,
      static_cast<long long>(s.faces), static_cast<long long>(s.batches),
      static_cast<long long>(s.detections));
}

// Pictures: classified together in batches. Returns how many could not be read.
int run_pictures(Predictor& predictor, const std::vector<fs::path>& images, const CliOptions& cli,
                 const fs::path& annotate_dir) {
  const std::vector<ImageResult> results = predictor.predict(images);
  if (!annotate_dir.empty()) create_folder(annotate_dir);
  if (!cli.json_lines && std::string(predictor.tta_name()) != "none") {
    std::printf("(test-time augmentation: %s)\n", predictor.tta_name());
  }
  std::map<std::string, int> used_names;
  int failed = 0;
  for (const ImageResult& r : results) {
    if (!r.ok) {
      ++failed;
      std::fprintf(stderr, "fer-predict: error: %s: %s\n", r.path.c_str(), r.error.c_str());
      if (cli.json_lines) {
        print_json({{"image", r.path.string()}, {"status", "error"}, {"error", r.error}});
      }
      continue;
    }
    if (cli.json_lines) {
      if (r.faces.empty()) {
        print_json({{"image", r.path.string()}, {"status", "no_face"}, {"message", kNoFace}});
      }
      for (std::size_t i = 0; i < r.faces.size(); ++i) {
        print_json(result_json(r, i, predictor.tta_name()));
      }
    } else {
      print_table(r, cli.predict.detect_faces);
    }
    if (!annotate_dir.empty()) {
      write_annotated(r, unique_name(annotate_dir, r.path.stem().string(), ".png", &used_names));
    }
  }
  std::fflush(stdout);
  if (failed > 0) {
    std::fprintf(stderr, "fer-predict: %d of %zu picture(s) could not be read\n", failed,
                 results.size());
  }
  return failed;
}

struct VideoRunOutcome {
  int failed = 0;
  int variable_rate = 0;  // processed, but with a variable frame rate (exit 3 without --accept-vfr)
  bool interrupted = false;
};

// Videos and cameras, one after the other; Ctrl-C ends the current one (its outputs finished)
// and skips the rest.
VideoRunOutcome run_videos(Predictor& predictor, const std::vector<VideoSource>& sources,
                           const CliOptions& cli, const fs::path& annotate_dir,
                           const fs::path& annotate_file) {
  VideoRunOutcome outcome;
  const std::vector<std::string>& classes = predictor.classes();
  std::map<std::string, int> used_videos, used_timelines;
  if (!annotate_dir.empty()) create_folder(annotate_dir);
  if (!cli.timeline_dir.empty()) create_folder(cli.timeline_dir);
  for (const VideoSource& source : sources) {
    if (cancel_requested()) break;
    const std::string stem =
        source.is_camera() ? "camera" + std::to_string(source.camera) : source.path.stem().string();
    fs::path annotate = annotate_file;
    if (!annotate_dir.empty()) annotate = unique_name(annotate_dir, stem, ".avi", &used_videos);
    VideoOutputs outputs(cli, classes, annotate);
    const VideoResult r = process_video(predictor, source, cli.video, outputs);
    outputs.finish_annotated();
    outcome.interrupted = outcome.interrupted || r.interrupted;
    if (!r.error.empty()) {
      ++outcome.failed;
      std::fprintf(
          stderr, "fer-predict: error: %s\n",
          r.error.rfind(r.source, 0) == 0 ? r.error.c_str() : (r.source + ": " + r.error).c_str());
    }
    if (r.variable_rate) {
      // Processed in full either way; without --accept-vfr it counts as bad input (exit 3), as
      // a constant-rate consumer of the outputs (the annotated video) would get the timing wrong.
      if (!cli.accept_vfr) ++outcome.variable_rate;
      std::fprintf(
          stderr,
          "fer-predict: %s: %s: variable frame rate (frames %.1f-%.1f ms apart, %.2f fps "
          "nominal): processed with the stream's own timestamps as times%s%s\n",
          cli.accept_vfr ? "note" : "error", r.source.c_str(), 1e3 * r.min_interval_s,
          1e3 * r.max_interval_s, r.info.fps,
          outputs.annotated_written() ? "; the annotated video plays at a constant rate" : "",
          cli.accept_vfr ? "" : "; --accept-vfr accepts such videos (exit code 0)");
    }
    // JSON: an end line for every source, the failed ones included (as pictures get one).
    if (cli.json_lines || r.frames > 0 || r.error.empty()) {
      print_video_summary(r, classes, cli.json_lines, predictor.tta_name());
    }
    std::fflush(stdout);
    if (cli.stats) print_stats(r);
    if (!cli.timeline_dir.empty() && r.frames > 0) {
      outputs.timeline().write_png(
          unique_name(cli.timeline_dir, stem, ".timeline.png", &used_timelines),
          r.source + ": smoothed emotions per track");
    }
  }
  if (outcome.failed > 0) {
    std::fprintf(stderr, "fer-predict: %d of %zu video source(s) failed\n", outcome.failed,
                 sources.size());
  }
  if (outcome.variable_rate > 0) {
    std::fprintf(stderr,
                 "fer-predict: %d of %zu video source(s) have a variable frame rate (processed; "
                 "--accept-vfr accepts them)\n",
                 outcome.variable_rate, sources.size());
  }
  return outcome;
}

}  // namespace

void define_flags(CLI::App& app, CliOptions& cli) {
  app.description(
      "fer-predict: the facial expression of every face in pictures, videos and camera "
      "streams, with a fer-dist-train checkpoint");
  app.footer(
      std::string("\nExamples:\n"
                  "  fer-predict --checkpoint runs/demo/checkpoints/best.pt photo.jpg\n"
                  "  fer-predict --checkpoint best.pt --json --top-k 2 photos/\n"
                  "  fer-predict --checkpoint best.pt --annotate out/ group.jpg\n"
                  "  fer-predict --checkpoint best.pt --no-detect face_crop.png\n"
                  "  fer-predict --checkpoint best.pt --json --every 3 VIDEO\n"
                  "  fer-predict --checkpoint best.pt --camera INDEX --annotate webcam.avi\n\n"
                  "Videos (.mp4 .mkv .avi .webm .mov ...) are read through FFmpeg; their "
                  "faces are tracked\n(a track id per face) and their emotions smoothed "
                  "over time. Pictures are processed\nfirst, then videos and cameras in "
                  "the order given.\n\n"
                  "A video whose frames are not evenly spaced (variable frame rate, as phones "
                  "record) is\nprocessed in full, its times taken from the stream's timestamps, "
                  "and reported on stderr\nwith exit code 3 (the annotated copy plays at a "
                  "constant rate); --accept-vfr makes that\na note and exit code 0.\n\n") +
      kExitCodes);
  PredictOptions& options = cli.predict;
  VideoOptions& video = cli.video;
  app.add_option("--checkpoint", options.checkpoint, "fer-dist-train checkpoint (.pt)")->required();
  app.add_flag("--detect-faces,!--no-detect", options.detect_faces,
               "find faces with the Haar cascade (default), or classify each whole picture");
  app.add_option("--cascade", options.cascade, "OpenCV Haar cascade XML")->capture_default_str();
  app.add_option("--top-k", options.top_k, "emotions listed per face")->capture_default_str();
  app.add_option("--margin", options.margin, "added around each detected box, fraction of its side")
      ->capture_default_str();
  app.add_option("--min-face", options.min_face, "smallest face to detect, pixels")
      ->capture_default_str();
  app.add_option("--annotate", cli.annotate,
                 "write copies with boxes and labels drawn to this folder (pictures: PNG, videos: "
                 "AVI), or to this .avi/.mkv/.mp4 file for a single video or camera");
  app.add_flag("--json", cli.json_lines,
               "one JSON object per face (per picture without a face; videos: per face per "
               "frame, then per track)");
  app.add_option("--batch-size", options.batch_size, "faces per forward pass")
      ->capture_default_str();
  app.add_option("--device", options.device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  app.add_option("--threads", options.threads,
                 "LibTorch and OpenCV worker threads (0: all cores); videos: from 2 on, detection "
                 "and inference overlap, and decoding runs on one more")
      ->capture_default_str();
  app.add_option("--camera", cli.cameras, "camera index to read (Ctrl-C ends it), repeatable")
      ->allow_extra_args(false);
  app.add_option("--every", video.every,
                 "videos: detect faces on every N-th frame, track them in between")
      ->capture_default_str();
  app.add_option("--detect-width", video.detect.max_width,
                 "videos: frames are scaled to this width for face detection (0: full size)")
      ->capture_default_str();
  app.add_option("--start", video.limits.start_s, "videos: first second processed")
      ->capture_default_str();
  app.add_option("--end", video.limits.end_s, "videos: stop at this second (default: the end)");
  app.add_option("--max-frames", video.limits.max_frames,
                 "videos: frames processed per source at most (0: no limit)")
      ->capture_default_str();
  app.add_option("--smooth", video.smooth,
                 "videos: weight of the past in each track's moving average of probabilities, "
                 "[0, 1); 0: per-frame labels")
      ->capture_default_str();
  app.add_option("--max-missed", video.tracker.max_missed,
                 "videos: detection rounds a track may miss before it ends")
      ->capture_default_str();
  app.add_option("--timeline-png", cli.timeline_dir,
                 "videos: write DIR/<name>.timeline.png, each track's smoothed emotions over time");
  app.add_option("--tta", options.tta,
                 "test-time augmentation, as the trainer's eval.tta: none | flip (the face and "
                 "its mirror, 2x the inference time) | ten_crop (the five pad-4 crops and their "
                 "mirrors, 10x); probabilities averaged over the views")
      ->check(CLI::IsMember({"none", "flip", "ten_crop"}))
      ->capture_default_str();
  app.add_flag("--accept-vfr", cli.accept_vfr,
               "videos: a variable frame rate is a note (exit code 0) instead of an error (3); "
               "such videos are processed in full either way");
  app.add_flag("--stats", cli.stats,
               "videos: frames per second and the time per frame of each stage, on stderr");
  app.add_option("INPUT", cli.inputs,
                 "pictures, folders searched for pictures, video files (IMAGE_OR_DIR, VIDEO)");
}

// The command line's inputs sorted into pictures and video/camera sources, and where --annotate
// writes. ConfigError/DataError for inputs that cannot make sense together.
struct Inputs {
  std::vector<fs::path> images;
  std::vector<VideoSource> sources;
  fs::path annotate_dir, annotate_file;
};

Inputs sort_inputs(const CliOptions& cli) {
  Inputs in;
  // Video files by extension; everything else is a picture or a folder of pictures (a bad or
  // missing one is reported like any unreadable picture).
  std::vector<std::string> picture_args;
  for (const std::string& input : cli.inputs) {
    std::error_code ec;
    if (!fs::is_directory(input, ec) && has_video_extension(input)) {
      in.sources.push_back({fs::path(input), -1});
    } else {
      picture_args.push_back(input);
    }
  }
  for (const int camera : cli.cameras) in.sources.push_back({fs::path(), camera});
  if (!picture_args.empty()) in.images = collect_images(picture_args);
  if (!picture_args.empty() && in.images.empty() && in.sources.empty()) {
    throw DataError("no pictures found in the given folders");
  }
  // --annotate: a video file name for exactly one video or camera, else a folder.
  if (!cli.annotate.empty()) {
    if (has_video_extension(cli.annotate)) {
      annotated_video_fourcc(cli.annotate);  // a known container, else ConfigError
      if (in.sources.size() != 1 || !in.images.empty()) {
        throw ConfigError("--annotate " + cli.annotate + " names one video file, but there are " +
                              std::to_string(in.sources.size()) + " video/camera input(s) and " +
                              std::to_string(in.images.size()) + " picture(s)",
                          "give a folder to --annotate for several inputs");
      }
      in.annotate_file = cli.annotate;
    } else {
      in.annotate_dir = cli.annotate;
    }
  }
  return in;
}

int main(int argc, char** argv) {
  CLI::App app;
  CliOptions cli;
  define_flags(app, cli);
  PredictOptions& options = cli.predict;
  VideoOptions& video = cli.video;
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
    // Every batch frees and re-allocates the same activations (MiBs at width 1): kept for reuse
    // instead of fresh zeroed pages each time (12% of the inference CPU time on a video).
    spdlog::debug("{}", keep_freed_memory_for_reuse());
    if (cli.inputs.empty() && cli.cameras.empty()) {
      throw ConfigError("nothing to do: give pictures, folders, videos or --camera N",
                        "fer-predict --help shows examples");
    }
    const Inputs in = sort_inputs(cli);
    const std::vector<fs::path>& images = in.images;
    const std::vector<VideoSource>& sources = in.sources;
    video.threads = options.threads;
    // Bad values are usage errors before the model loads (the pipeline checks them again).
    FaceTracker check_tracker(video.tracker);
    EmotionSmoother check_smoother(video.smooth);
    FER_CHECK(video.every >= 1, ConfigError, "--every must be at least 1, got ", video.every);
    FER_CHECK(video.limits.start_s >= 0 && video.limits.end_s > video.limits.start_s &&
                  video.limits.max_frames >= 0,
              ConfigError, "need 0 <= --start < --end and --max-frames >= 0");

    Predictor predictor(options);
    int failed_pictures = 0;
    if (!images.empty()) failed_pictures = run_pictures(predictor, images, cli, in.annotate_dir);
    VideoRunOutcome videos;
    if (!sources.empty()) {
      // Ctrl-C ends a video or camera stream cleanly: its annotated file is closed (playable)
      // and its summary printed. A second Ctrl-C kills at once.
      install_cancel_handlers();
      videos = run_videos(predictor, sources, cli, in.annotate_dir, in.annotate_file);
    }
    if (failed_pictures > 0 || videos.failed > 0 || videos.variable_rate > 0) {
      return static_cast<int>(ExitCode::kData);
    }
    if (videos.interrupted) {
      // A camera stream has no end but Ctrl-C: that is a normal end. A video file cut short is not.
      const bool all_cameras = std::all_of(sources.begin(), sources.end(),
                                           [](const VideoSource& s) { return s.is_camera(); });
      if (!all_cameras) {
        std::fprintf(stderr, "fer-predict: interrupted\n");
        return static_cast<int>(ExitCode::kInterrupted);
      }
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
