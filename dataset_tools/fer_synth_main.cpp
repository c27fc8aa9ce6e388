// fer-synth: draws the embedded default dataset, a synthetic FER ImageFolder. Only parses flags
// and calls write_synth_dataset().
#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>
#include <string>

#include "common/cancel.h"
#include "common/errors.h"
#include "common/logging.h"
#include "synth_face.h"

int main(int argc, char** argv) {
  fer::tools::SynthOptions options;
  std::string out;
  CLI::App app{
      "fer-synth: draws a synthetic facial-expression ImageFolder (angry, disgust, fear, happy,\n"
      "neutral, sad, surprise) of grayscale PNG faces. Deterministic by --seed, whatever\n"
      "--threads."};
  app.add_option("OUT", out, "output folder (created; refused if it exists without --overwrite)")
      ->required();
  app.add_option("--per-class", options.per_class, "images per class, all splits together")
      ->capture_default_str();
  app.add_option("--size", options.size, "image side in pixels, 16..512")->capture_default_str();
  app.add_option("--seed", options.seed, "random seed; everything drawn follows from it")
      ->capture_default_str();
  app.add_option("--layout", options.layout,
                 "split: OUT/{train,val,test}/<class>/ (80/10/10); flat: OUT/<class>/")
      ->capture_default_str();
  app.add_option("--threads", options.threads, "writer threads, 0 = all cores")
      ->capture_default_str();
  app.add_flag("--overwrite", options.overwrite, "replace an existing OUT");
  app.footer(
      "\nExamples:\n"
      "  fer-synth data/synth-images --per-class 100\n"
      "  fer-synth faces --layout flat --per-class 20 --size 64 --seed 7\n\n"
      "Exit codes: 0 ok, 2 usage (bad flags or options), 4 I/O error (cannot write OUT, OUT\n"
      "exists), 130 interrupted (nothing partial is left behind).");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help or the parse error
    return rc == 0 ? rc : static_cast<int>(fer::ExitCode::kUsage);
  }

  try {
    fer::init_logging(fer::LogOptions{});
    fer::install_cancel_handlers();
    fer::tools::write_synth_dataset(out, options);
  } catch (const fer::Error& e) {
    std::cerr << "fer-synth: error: " << e.what() << "\n";
    if (!e.hint().empty()) std::cerr << "  hint: " << e.hint() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << "fer-synth: error: " << e.what() << "\n";
    return static_cast<int>(fer::ExitCode::kFailure);
  }
  return static_cast<int>(fer::ExitCode::kOk);
}
