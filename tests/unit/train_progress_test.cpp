// Progress output: ETA formatting, the periodic line and the terminal bar.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "train/progress.h"

namespace fer {
namespace {

TEST(Progress, EtaIsMinutesSecondsOrHoursMinutesSeconds) {
  EXPECT_EQ(format_eta(0), "0:00");
  EXPECT_EQ(format_eta(7.4), "0:07");
  EXPECT_EQ(format_eta(754), "12:34");
  EXPECT_EQ(format_eta(3723), "1:02:03");
  EXPECT_EQ(format_eta(-1), "?");
  EXPECT_EQ(format_eta(std::nan("")), "?");
}

ProgressSnapshot example() {
  ProgressSnapshot s;
  s.epoch = 1;
  s.epochs = 30;
  s.step = 140;
  s.last_step = 700;
  s.step_in_epoch = 40;
  s.steps_per_epoch = 100;
  s.loss = 1.23456;
  s.lr = 0.0012;
  s.images_per_s = 850.2;
  s.eta_epoch_s = 12;
  s.eta_run_s = 225;
  return s;
}

TEST(Progress, LineShowsStepLossLrRateAndEta) {
  EXPECT_EQ(progress_line(example()),
            "epoch 1/30 step 140/700 loss 1.2346 lr 1.200e-03 850 img/s ETA 3:45 (epoch 0:12)");
}

TEST(Progress, BarIsFilledByTheFractionOfTheEpoch) {
  const std::string bar = progress_bar(example(), 10);
  EXPECT_EQ(bar,
            "epoch 1/30 [####......] 40/100 loss 1.2346 lr 1.2e-03 850 img/s ETA 0:12 "
            "(run 3:45)");
  ProgressSnapshot done = example();
  done.step_in_epoch = 100;
  EXPECT_NE(progress_bar(done, 10).find("[##########]"), std::string::npos);
}

TEST(Progress, ReporterWithoutABarEstimatesTheEtaFromItsOwnSteps) {
  ProgressReporter reporter(/*draw_bar=*/false, /*first_step=*/10, /*last_step=*/40,
                            /*steps_per_epoch=*/10, /*epochs=*/4);
  reporter.start_epoch(1, 0);
  EXPECT_NE(reporter.status_line(0).find("ETA ? (epoch ?)"), std::string::npos);  // no step yet
  reporter.step(11, 2.0, 0.01, 64);
  const std::string line = reporter.status_line(100);
  EXPECT_NE(line.find("epoch 1/4 step 11/40 loss 2.0000"), std::string::npos) << line;
  EXPECT_EQ(line.find("ETA ?"), std::string::npos) << line;
  reporter.clear();  // no bar drawn: nothing to erase
}

}  // namespace
}  // namespace fer
