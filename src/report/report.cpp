#include "report/report.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <sstream>

#include "common/errors.h"
#include "common/fs_util.h"
#include "report/plot.h"

namespace fer::report {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// One `step` record of metrics.jsonl.
struct StepRecord {
  double loss = NAN, lr = NAN, beta1 = NAN;
};

struct RunRecords {
  // Keyed by step / epoch: a resumed run may repeat records; the later one wins.
  std::map<std::int64_t, StepRecord> steps;
  std::map<std::int64_t, json> epochs;
  std::vector<std::string> warnings;
};

double number_or_nan(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : NAN;
}

RunRecords read_metrics(const fs::path& path) {
  std::ifstream in(path);
  FER_CHECK(in.good(), DataError, "cannot read ", path.string(),
            " (is this a fer-dist-train --out folder?)");
  RunRecords records;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      // A crash can leave a torn last line; everything before it is still good.
      records.warnings.push_back(path.filename().string() + ":" + std::to_string(line_no) +
                                 ": not JSON, skipped");
      continue;
    }
    const std::string type = j.value("type", "");
    if (type == "step" && j.contains("step")) {
      records.steps[j["step"].get<std::int64_t>()] = {
          number_or_nan(j, "loss"), number_or_nan(j, "lr"), number_or_nan(j, "beta1")};
    } else if (type == "epoch" && j.contains("epoch")) {
      records.epochs[j["epoch"].get<std::int64_t>()] = j;
    }
  }
  FER_CHECK(!records.steps.empty() || !records.epochs.empty(), DataError, path.string(),
            " holds no step or epoch records");
  return records;
}

// The evaluation the report details: the summary's test split (best checkpoint), else the last
// epoch's validation.
struct Evaluation {
  std::string name;  // for titles: "test (best checkpoint, step 28)"
  json metrics;      // eval_json of the trainer: loss, accuracy, macro_f1, per_class, confusion
};

std::optional<Evaluation> pick_evaluation(const json& summary, const RunRecords& records) {
  if (summary.contains("test") && summary["test"].contains("confusion")) {
    std::string name = "test, best checkpoint";
    if (summary.contains("best_step")) {
      name += " (step " + std::to_string(summary["best_step"].get<std::int64_t>()) + ")";
    }
    return Evaluation{name, summary["test"]};
  }
  for (auto it = records.epochs.rbegin(); it != records.epochs.rend(); ++it) {
    if (it->second.contains("val") && it->second["val"].contains("confusion")) {
      return Evaluation{"validation after epoch " + std::to_string(it->first + 1),
                        it->second["val"]};
    }
  }
  return std::nullopt;
}

// Class names in label order. summary.json has them; without it the order of the confusion
// matrix is unknown (per_class is keyed by name, in alphabetical order), so rows get numbers.
std::vector<std::string> class_names(const json& summary, const json& metrics, bool* known) {
  const std::size_t k = metrics.contains("confusion") ? metrics["confusion"].size() : 0;
  if (summary.contains("classes") && summary["classes"].size() == k) {
    *known = true;
    return summary["classes"].get<std::vector<std::string>>();
  }
  *known = false;
  std::vector<std::string> names;
  for (std::size_t c = 0; c < k; ++c) names.push_back(std::to_string(c));
  return names;
}

std::string fixed(double v, int decimals = 4) {
  if (!std::isfinite(v)) return "–";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

cv::Mat loss_plot(const RunRecords& r) {
  LineChart chart;
  chart.title = "Loss per epoch";
  chart.x = {"epoch", 0.0, std::nullopt, true};
  chart.y.label = "cross-entropy loss";
  Series train{"train", {}, {}, palette()[0], true, false};
  Series val{"validation", {}, {}, palette()[1], true, false};
  for (const auto& [epoch, j] : r.epochs) {
    train.x.push_back(epoch + 1.0);
    train.y.push_back(number_or_nan(j, "train_loss"));
    if (j.contains("val")) {
      val.x.push_back(epoch + 1.0);
      val.y.push_back(number_or_nan(j["val"], "loss"));
    }
  }
  chart.series = {train, val};
  return draw_line_chart(chart);
}

cv::Mat accuracy_plot(const RunRecords& r) {
  LineChart chart;
  chart.title = "Accuracy per epoch";
  chart.x = {"epoch", 0.0, std::nullopt, true};
  chart.y = {"accuracy, macro-F1", 0.0, 1.0, false};
  Series train{"train", {}, {}, palette()[0], true, false};
  Series val{"validation", {}, {}, palette()[1], true, false};
  Series f1{"validation macro-F1", {}, {}, palette()[1], true, true};
  for (const auto& [epoch, j] : r.epochs) {
    train.x.push_back(epoch + 1.0);
    train.y.push_back(number_or_nan(j, "train_accuracy"));
    if (j.contains("val")) {
      val.x.push_back(epoch + 1.0);
      val.y.push_back(number_or_nan(j["val"], "accuracy"));
      f1.x.push_back(epoch + 1.0);
      f1.y.push_back(number_or_nan(j["val"], "macro_f1"));
    }
  }
  chart.series = {train, val, f1};
  return draw_line_chart(chart);
}

// lr above, beta1 below, sharing the step axis.
cv::Mat schedule_plot(const RunRecords& r) {
  Series lr{"learning rate", {}, {}, palette()[0], false, false};
  Series beta1{"Adam beta1", {}, {}, palette()[2], false, false};
  for (const auto& [step, s] : r.steps) {
    lr.x.push_back(static_cast<double>(step));
    lr.y.push_back(s.lr);
    beta1.x.push_back(static_cast<double>(step));
    beta1.y.push_back(s.beta1);
  }
  const bool few = lr.x.size() <= 40;
  lr.markers = beta1.markers = few;
  LineChart top{"Learning rate over steps (one-cycle)",
                {"step", 0.0, std::nullopt, true},
                {"learning rate", 0.0, std::nullopt, false},
                {lr}};
  LineChart bottom{"Adam beta1 over steps (cycled momentum)",
                   {"step", 0.0, std::nullopt, true},
                   {"beta1", std::nullopt, std::nullopt, false},
                   {beta1}};
  cv::Mat out;
  cv::vconcat(draw_line_chart(top, {900, 400}), draw_line_chart(bottom, {900, 400}), out);
  return out;
}

cv::Mat confusion_plot(const Evaluation& eval, const std::vector<std::string>& names) {
  HeatMap map;
  const json& cm = eval.metrics["confusion"];
  map.title = "Confusion matrix: " + eval.name;
  map.x_label = "predicted class";
  map.y_label = "true class";
  map.row_labels = map.col_labels = names;
  map.shade_label = "fraction of the true class";
  for (const auto& row : cm) {
    std::vector<double> values = row.get<std::vector<double>>();
    double total = 0;
    for (double v : values) total += v;
    std::vector<double> shade;
    for (double v : values) shade.push_back(total > 0 ? v / total : 0.0);
    map.values.push_back(values);
    map.shade.push_back(shade);
  }
  return draw_heat_map(map);
}

cv::Mat per_class_plot(const Evaluation& eval, const std::vector<std::string>& classes) {
  BarChart chart;
  chart.title = "Per-class precision, recall and F1: " + eval.name;
  chart.x_label = "class";
  chart.y = {"score", 0.0, 1.0, false};
  chart.groups = {"precision", "recall", "F1"};
  chart.values.assign(3, {});
  for (const auto& name : classes) {
    const json& pc = eval.metrics["per_class"];
    chart.categories.push_back(name);
    const json entry = pc.contains(name) ? pc[name] : json::object();
    chart.values[0].push_back(number_or_nan(entry, "precision"));
    chart.values[1].push_back(number_or_nan(entry, "recall"));
    chart.values[2].push_back(number_or_nan(entry, "f1"));
  }
  return draw_bar_chart(chart);
}

void add_row(std::ostringstream& md, const std::string& key, const std::string& value) {
  md << "| " << key << " | " << value << " |\n";
}

}  // namespace

ReportResult write_report(const ReportOptions& options) {
  const fs::path run = options.run_dir;
  FER_CHECK(fs::is_directory(run), DataError, run.string(), " is not a folder");
  ReportResult result;
  result.out_dir = options.out_dir.empty() ? run / "report" : options.out_dir;
  RunRecords records = read_metrics(run / "metrics.jsonl");
  result.warnings = records.warnings;

  json summary = json::object();
  const fs::path summary_path = run / "summary.json";
  if (fs::exists(summary_path)) {
    try {
      summary = json::parse(read_file(summary_path));
    } catch (const json::exception& e) {
      result.warnings.push_back("summary.json is not valid JSON (" + std::string(e.what()) +
                                "); reporting from metrics.jsonl only");
    }
  } else {
    result.warnings.push_back("no summary.json (the run has not finished): no test metrics");
  }

  std::error_code ec;
  fs::create_directories(result.out_dir, ec);
  FER_CHECK(!ec, IoError, "cannot create ", result.out_dir.string(), ": ", ec.message());

  std::vector<std::pair<std::string, std::string>> figures;  // (caption, file)
  auto emit = [&](const char* file, const std::string& caption, const cv::Mat& image) {
    write_png(result.out_dir / file, image);
    result.images.push_back(result.out_dir / file);
    figures.emplace_back(caption, file);
  };
  if (!records.epochs.empty()) {
    emit(kLossPlot, "Train and validation loss per epoch", loss_plot(records));
    emit(kAccuracyPlot, "Train and validation accuracy per epoch", accuracy_plot(records));
  } else {
    result.warnings.push_back("no epoch records yet: no loss/accuracy curves");
  }
  if (!records.steps.empty()) {
    emit(kSchedulePlot, "Learning rate and Adam beta1 over steps", schedule_plot(records));
  }
  const std::optional<Evaluation> eval = pick_evaluation(summary, records);
  bool names_known = false;
  std::vector<std::string> classes;
  if (eval) {
    classes = class_names(summary, eval->metrics, &names_known);
    if (!names_known) {
      result.warnings.push_back(
          "class order unknown without summary.json: the confusion matrix shows label numbers");
    }
    emit(kConfusionPlot, "Confusion matrix (" + eval->name + ")", confusion_plot(*eval, classes));
    // Per-class scores are keyed by name, so they are right even when the label order is not
    // known; then they are listed alphabetically.
    std::vector<std::string> scored = classes;
    if (!names_known) {
      scored.clear();
      for (const auto& item : eval->metrics["per_class"].items()) scored.push_back(item.key());
    }
    emit(kPerClassPlot, "Per-class precision, recall and F1 (" + eval->name + ")",
         per_class_plot(*eval, scored));
    classes = scored;
  } else {
    result.warnings.push_back("no evaluation yet: no confusion matrix or per-class scores");
  }

  std::ostringstream md;
  md << "# Training report: " << fs::absolute(run).lexically_normal().filename().string() << "\n\n";
  md << "Generated by `fer-report` from `metrics.jsonl`"
     << (summary.empty() ? "" : " and `summary.json`") << ".\n\n";
  md << "## Summary\n\n| | |\n|---|---|\n";
  const std::int64_t last_step = records.steps.empty() ? -1 : records.steps.rbegin()->first;
  add_row(md, "steps",
          summary.contains("steps") ? summary["steps"].dump()
                                    : std::to_string(last_step) + " (so far)");
  if (summary.contains("epochs")) add_row(md, "epochs", summary["epochs"].dump());
  add_row(md, "epochs with records", std::to_string(records.epochs.size()));
  if (summary.contains("world_size")) add_row(md, "ranks", summary["world_size"].dump());
  if (summary.contains("best_val_accuracy")) {
    add_row(md, "best validation accuracy",
            fixed(summary["best_val_accuracy"].get<double>()) + " (step " +
                summary.value("best_step", json(-1)).dump() + ")");
  }
  if (summary.contains("test")) {
    const json& t = summary["test"];
    add_row(md, "test accuracy", fixed(number_or_nan(t, "accuracy")));
    add_row(md, "test macro-F1", fixed(number_or_nan(t, "macro_f1")));
    add_row(md, "test loss", fixed(number_or_nan(t, "loss")));
    if (t.contains("count")) add_row(md, "test images", t["count"].dump());
  }
  if (summary.contains("train_images_per_s")) {
    add_row(md, "training throughput",
            fixed(summary["train_images_per_s"].get<double>(), 1) + " images/s");
  }
  if (summary.contains("seconds")) {
    add_row(md, "wall time", fixed(summary["seconds"].get<double>(), 1) + " s");
  }
  if (summary.contains("skipped_steps")) {
    add_row(md, "skipped non-finite steps", summary["skipped_steps"].dump());
  }
  if (fs::exists(run / "config.yaml")) {
    add_row(md, "config",
            "[config.yaml](" + fs::relative(run / "config.yaml", result.out_dir).generic_string() +
                ")");
  }

  if (eval) {
    md << "\n## Per class (" << eval->name << ")\n\n"
       << "| class | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|\n";
    const json& cm = eval->metrics["confusion"];
    for (std::size_t c = 0; c < classes.size(); ++c) {
      const json& pc = eval->metrics["per_class"];
      const json entry = pc.contains(classes[c]) ? pc[classes[c]] : json::object();
      std::int64_t support = 0;
      if (names_known && c < cm.size()) {
        for (const auto& v : cm[c]) support += v.get<std::int64_t>();
      }
      md << "| " << classes[c] << " | " << fixed(number_or_nan(entry, "precision"), 3) << " | "
         << fixed(number_or_nan(entry, "recall"), 3) << " | "
         << fixed(number_or_nan(entry, "f1"), 3) << " | "
         << (names_known ? std::to_string(support) : "–") << " |\n";
    }
  }

  if (!records.epochs.empty()) {
    md << "\n## Epochs\n\n| epoch | step | train loss | train acc | val loss | val acc | "
          "val macro-F1 |\n|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const auto& [epoch, j] : records.epochs) {
      const json val = j.contains("val") ? j["val"] : json::object();
      md << "| " << epoch + 1 << " | " << j.value("step", json(0)).dump() << " | "
         << fixed(number_or_nan(j, "train_loss")) << " | "
         << fixed(number_or_nan(j, "train_accuracy")) << " | " << fixed(number_or_nan(val, "loss"))
         << " | " << fixed(number_or_nan(val, "accuracy")) << " | "
         << fixed(number_or_nan(val, "macro_f1")) << " |\n";
    }
  }

  md << "\n## Plots\n";
  for (const auto& [caption, file] : figures) {
    md << "\n### " << caption << "\n\n![" << caption << "](" << file << ")\n";
  }
  if (!result.warnings.empty()) {
    md << "\n## Notes\n\n";
    for (const auto& w : result.warnings) md << "- " << w << "\n";
  }
  result.markdown = result.out_dir / kReportMarkdown;
  write_file_atomic(result.markdown, md.str());
  return result;
}

}  // namespace fer::report
