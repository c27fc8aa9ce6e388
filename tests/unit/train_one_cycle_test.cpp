// OneCycleSchedule reproduces PyTorch's OneCycleLR lr and Adam beta1 at every step (golden files
// from tests/golden/make_onecycle_golden.py) and rejects bad options and out-of-range steps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "train/one_cycle.h"

namespace fer {
namespace {

// Golden values are printed with 11 significant digits (lr) and 10 decimals (beta1).
constexpr double kRelTolerance = 1e-6;
// Absolute floor for values near zero (the smallest lr in the files is ~1e-10).
constexpr double kAbsFloor = 1e-12;

const char* const kGoldenFiles[] = {
    "default_t100.txt",     "default_t37.txt",           "default_t1000.txt",
    "three_phase_t200.txt", "linear_t150.txt",           "three_phase_linear_t64.txt",
    "custom_t300.txt",      "no_momentum_t50.txt",       "tiny_t3.txt",
    "tiny_t1.txt",          "three_phase_pct07_t20.txt",
};

struct GoldenStep {
  std::int64_t step;
  double lr;
  double beta1;
};

struct Golden {
  OneCycleOptions options;
  std::vector<GoldenStep> steps;
};

std::string golden_path(const std::string& name) {
  return std::string(FER_SOURCE_DIR) + "/tests/golden/onecycle/" + name;
}

// Parses "# key=value ..." (every OneCycleOptions field) and then "step lr beta1" lines.
Golden read_golden(const std::string& name) {
  std::ifstream in(golden_path(name));
  if (!in) throw std::runtime_error("cannot open " + golden_path(name));
  std::string line;
  std::getline(in, line);
  if (line.rfind("# ", 0) != 0) throw std::runtime_error(name + ": no header line");
  std::map<std::string, std::string> kv;
  std::istringstream header(line.substr(2));
  for (std::string token; header >> token;) {
    const auto eq = token.find('=');
    if (eq != std::string::npos) kv[token.substr(0, eq)] = token.substr(eq + 1);
  }
  const auto get = [&](const std::string& key) {
    const auto it = kv.find(key);
    if (it == kv.end()) throw std::runtime_error(name + ": header lacks " + key);
    return it->second;
  };
  Golden g;
  OneCycleOptions& o = g.options;
  o.total_steps = std::stoll(get("total_steps"));
  o.max_lr = std::stod(get("max_lr"));
  o.pct_start = std::stod(get("pct_start"));
  o.anneal = get("anneal");
  o.div_factor = std::stod(get("div_factor"));
  o.final_div_factor = std::stod(get("final_div_factor"));
  o.three_phase = get("three_phase") == "1";
  o.cycle_momentum = get("cycle_momentum") == "1";
  o.base_momentum = std::stod(get("base_momentum"));
  o.max_momentum = std::stod(get("max_momentum"));
  o.beta1_when_not_cycling = std::stod(get("beta1"));
  GoldenStep s;
  while (in >> s.step >> s.lr >> s.beta1) g.steps.push_back(s);
  if (!in.eof()) throw std::runtime_error(name + ": unparsable line");
  return g;
}

double relative_error(double actual, double expected) {
  return std::abs(actual - expected) / std::max(std::abs(expected), kAbsFloor);
}

TEST(OneCycleSchedule, MatchesPyTorchGoldenAtEveryStep) {
  std::size_t points = 0;
  double max_error = 0;
  for (const char* name : kGoldenFiles) {
    SCOPED_TRACE(name);
    const Golden golden = read_golden(name);
    const OneCycleSchedule schedule(golden.options);
    ASSERT_EQ(static_cast<std::int64_t>(golden.steps.size()), golden.options.total_steps);
    for (std::size_t i = 0; i < golden.steps.size(); ++i) {
      const GoldenStep& g = golden.steps[i];
      ASSERT_EQ(g.step, static_cast<std::int64_t>(i));
      const double lr_error = relative_error(schedule.lr(g.step), g.lr);
      const double beta1_error = relative_error(schedule.momentum(g.step), g.beta1);
      EXPECT_LE(lr_error, kRelTolerance)
          << "lr at step " << g.step << ": expected " << g.lr << ", got " << schedule.lr(g.step);
      EXPECT_LE(beta1_error, kRelTolerance) << "beta1 at step " << g.step << ": expected "
                                            << g.beta1 << ", got " << schedule.momentum(g.step);
      max_error = std::max({max_error, lr_error, beta1_error});
      points += 2;
    }
  }
  EXPECT_EQ(points, 2u * (100 + 37 + 1000 + 200 + 150 + 64 + 300 + 50 + 3 + 1 + 20));
  std::cout << "[          ] compared " << points << " golden values, max relative error "
            << max_error << "\n";
}

TEST(OneCycleSchedule, LrIncreasesMonotonicallyDuringWarmUpAndBeta1Decreases) {
  OneCycleOptions o;
  o.total_steps = 500;
  const OneCycleSchedule schedule(o);
  const std::int64_t warmup_end = static_cast<std::int64_t>(o.pct_start * o.total_steps) - 1;
  // Not bit-exact: PyTorch's cosine formula gives 0.0003999999999999993 for 0.0004 at step 0.
  EXPECT_NEAR(schedule.lr(0), o.max_lr / o.div_factor, 1e-15);
  for (std::int64_t s = 1; s <= warmup_end; ++s) {
    EXPECT_GT(schedule.lr(s), schedule.lr(s - 1)) << "step " << s;
    EXPECT_LT(schedule.momentum(s), schedule.momentum(s - 1)) << "step " << s;
  }
  EXPECT_DOUBLE_EQ(schedule.lr(warmup_end), o.max_lr);
  EXPECT_DOUBLE_EQ(schedule.momentum(warmup_end), o.base_momentum);
  for (std::int64_t s = warmup_end + 1; s < o.total_steps; ++s) {
    EXPECT_LT(schedule.lr(s), schedule.lr(s - 1)) << "step " << s;
  }
}

TEST(OneCycleSchedule, LastStepReachesMinLrAndMaxMomentum) {
  for (const bool three_phase : {false, true}) {
    for (const char* anneal : {"cos", "linear"}) {
      OneCycleOptions o;
      o.total_steps = 1234;
      o.max_lr = 0.02;
      o.div_factor = 20;
      o.final_div_factor = 50;
      o.three_phase = three_phase;
      o.anneal = anneal;
      const OneCycleSchedule schedule(o);
      const double min_lr = o.max_lr / o.div_factor / o.final_div_factor;
      EXPECT_NEAR(schedule.lr(o.total_steps - 1), min_lr, 1e-15 * min_lr + 1e-18)
          << "three_phase=" << three_phase << " anneal=" << anneal;
      EXPECT_DOUBLE_EQ(schedule.momentum(o.total_steps - 1), o.max_momentum);
      for (std::int64_t s = 0; s < o.total_steps; ++s) {
        ASSERT_GE(schedule.lr(s), min_lr * (1 - 1e-12));
        ASSERT_LE(schedule.lr(s), o.max_lr * (1 + 1e-12));
      }
    }
  }
}

TEST(OneCycleSchedule, BetaIsConstantWhenMomentumIsNotCycled) {
  OneCycleOptions o;
  o.total_steps = 10;
  o.cycle_momentum = false;
  o.beta1_when_not_cycling = 0.7;
  const OneCycleSchedule schedule(o);
  for (std::int64_t s = 0; s < o.total_steps; ++s) EXPECT_EQ(schedule.momentum(s), 0.7);
}

TEST(OneCycleSchedule, IsAPureFunctionOfTheStepSoAResumeContinuesTheCurve) {
  OneCycleOptions o;
  o.total_steps = 300;
  const OneCycleSchedule first(o);
  const OneCycleSchedule resumed(o);
  for (std::int64_t s = 299; s >= 0; --s) EXPECT_EQ(resumed.lr(s), first.lr(s));
  EXPECT_EQ(first.total_steps(), 300);
}

// Expects `options` to be rejected with a ConfigError whose message contains `needle`.
void expect_rejected(const OneCycleOptions& options, const std::string& needle) {
  try {
    OneCycleSchedule schedule(options);
    ADD_FAILURE() << "accepted options that should name " << needle;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(OneCycleSchedule, RejectsBadOptionsNamingTheOption) {
  OneCycleOptions good;
  good.total_steps = 100;
  EXPECT_NO_THROW(OneCycleSchedule{good});
  const auto with = [&](auto change) {
    OneCycleOptions o = good;
    change(o);
    return o;
  };
  expect_rejected(with([](auto& o) { o.total_steps = 0; }), "schedule.total_steps");
  expect_rejected(with([](auto& o) { o.total_steps = -5; }), "schedule.total_steps");
  expect_rejected(with([](auto& o) { o.pct_start = 0; }), "schedule.pct_start");
  expect_rejected(with([](auto& o) { o.pct_start = 1; }), "schedule.pct_start");
  expect_rejected(with([](auto& o) { o.pct_start = -0.1; }), "schedule.pct_start");
  expect_rejected(with([](auto& o) { o.pct_start = std::nan(""); }), "schedule.pct_start");
  expect_rejected(with([](auto& o) { o.anneal = "exp"; }), "schedule.anneal");
  expect_rejected(with([](auto& o) { o.max_lr = 0; }), "schedule.max_lr");
  expect_rejected(with([](auto& o) { o.max_lr = INFINITY; }), "schedule.max_lr");
  expect_rejected(with([](auto& o) { o.div_factor = 0; }), "schedule.div_factor");
  expect_rejected(with([](auto& o) { o.final_div_factor = -1; }), "schedule.final_div_factor");
  expect_rejected(with([](auto& o) { o.base_momentum = 1.0; }), "schedule.base_momentum");
  expect_rejected(with([](auto& o) { o.max_momentum = -0.1; }), "schedule.max_momentum");
  expect_rejected(with([](auto& o) { o.beta1_when_not_cycling = 1.5; }), "optim.betas[0]");
  // pct_start * total_steps == 1: PyTorch raises ZeroDivisionError in its constructor.
  expect_rejected(with([](auto& o) {
                    o.total_steps = 10;
                    o.pct_start = 0.1;
                  }),
                  "schedule.pct_start");
}

TEST(OneCycleSchedule, RejectsStepsOutsideTheRunNamingStepAndTotal) {
  OneCycleOptions o;
  o.total_steps = 100;
  const OneCycleSchedule schedule(o);
  EXPECT_NO_THROW(schedule.lr(99));
  for (const std::int64_t step : {std::int64_t{100}, std::int64_t{1000}, std::int64_t{-1}}) {
    try {
      schedule.lr(step);
      ADD_FAILURE() << "lr accepted step " << step;
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("step " + std::to_string(step)), std::string::npos) << what;
      EXPECT_NE(what.find("100"), std::string::npos) << what;
    }
    EXPECT_THROW(schedule.momentum(step), ConfigError);
  }
}

}  // namespace
}  // namespace fer
