// ConfigSchema: YAML and --set overrides fill structs; unknown keys and wrong types are errors
// that name the key path.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/config.h"
#include "common/errors.h"

namespace fer {
namespace {

struct OptimSection {
  double lr = 0.01;
  std::string name = "adam";
  std::vector<double> betas{0.9, 0.999};
  void describe(ConfigSchema& s) {
    s.field("lr", &lr);
    s.field("name", &name);
    s.field("betas", &betas);
  }
};

struct TestConfig {
  int epochs = 10;
  std::int64_t seed = 7;
  bool flip = true;
  std::vector<std::string> tags;
  OptimSection optim;
  void describe(ConfigSchema& s) {
    s.field("epochs", &epochs);
    s.field("seed", &seed);
    s.field("flip", &flip);
    s.field("tags", &tags);
    s.section("optim", &optim);
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what() + std::string(" | ") + e.hint();
  }
  return "no error";
}

TEST(Config, YamlFillsFieldsAndKeepsDefaultsOfAbsentKeys) {
  TestConfig c;
  ConfigSchema s;
  c.describe(s);
  s.apply_yaml("epochs: 3\noptim:\n  lr: 0.5\n  betas: [0.8, 0.9]\ntags: [a, b]\n", "t.yaml");
  EXPECT_EQ(c.epochs, 3);
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.5);
  EXPECT_EQ(c.optim.betas, (std::vector<double>{0.8, 0.9}));
  EXPECT_EQ(c.tags, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(c.optim.name, "adam");
  EXPECT_EQ(c.seed, 7);
}

TEST(Config, UnknownKeyIsRejectedWithItsPathLineAndKnownKeys) {
  TestConfig c;
  ConfigSchema s;
  c.describe(s);
  const auto msg = error_of([&] { s.apply_yaml("epochs: 3\noptim:\n  lrr: 0.5\n", "t.yaml"); });
  EXPECT_NE(msg.find("optim.lrr"), std::string::npos) << msg;
  EXPECT_NE(msg.find("t.yaml:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lr, name, betas"), std::string::npos) << msg;
}

TEST(Config, WrongTypeIsRejectedWithKeyPath) {
  TestConfig c;
  ConfigSchema s;
  c.describe(s);
  auto msg = error_of([&] { s.apply_yaml("epochs: ten\n", "t.yaml"); });
  EXPECT_NE(msg.find("epochs: expected an integer, got 'ten' (t.yaml:1)"), std::string::npos)
      << msg;
  msg = error_of([&] { s.apply_yaml("epochs: 2.5\n", "t.yaml"); });
  EXPECT_NE(msg.find("epochs"), std::string::npos) << msg;
  msg = error_of([&] { s.apply_yaml("optim: 3\n", "t.yaml"); });
  EXPECT_NE(msg.find("optim: expected a mapping"), std::string::npos) << msg;
  msg = error_of([&] { s.apply_yaml("optim:\n  betas: 0.9\n", "t.yaml"); });
  EXPECT_NE(msg.find("optim.betas: expected a list"), std::string::npos) << msg;
  msg = error_of([&] { s.apply_yaml("flip: maybe\n", "t.yaml"); });
  EXPECT_NE(msg.find("flip: expected true or false"), std::string::npos) << msg;
  msg = error_of([&] { s.apply_yaml("epochs: [1\n", "t.yaml"); });
  EXPECT_NE(msg.find("invalid YAML"), std::string::npos) << msg;
}

TEST(Config, OverridesSetNestedValuesAndListsAndRejectUnknownPaths) {
  TestConfig c;
  ConfigSchema s;
  c.describe(s);
  s.apply_override("optim.lr=0.25");
  s.apply_override("optim.betas=[0.5, 0.6]");
  s.apply_override("flip=false");
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.25);
  EXPECT_EQ(c.optim.betas, (std::vector<double>{0.5, 0.6}));
  EXPECT_FALSE(c.flip);
  EXPECT_NE(error_of([&] { s.apply_override("optim.nope=1"); }).find("optim.nope"),
            std::string::npos);
  EXPECT_NE(error_of([&] { s.apply_override("epochs.x=1"); }).find("not a section"),
            std::string::npos);
  EXPECT_NE(error_of([&] { s.apply_override("epochs"); }).find("key.path=value"),
            std::string::npos);
  EXPECT_NE(error_of([&] { s.apply_override("optim.lr=fast"); }).find("optim.lr"),
            std::string::npos);
}

TEST(Config, ResolvedYamlRoundTripsIntoAFreshStruct) {
  TestConfig a;
  ConfigSchema sa;
  a.describe(sa);
  sa.apply_override("optim.lr=0.1");  // not exactly representable: must round-trip anyway
  sa.apply_override("tags=[x]");
  TestConfig b;
  b.epochs = 99;
  ConfigSchema sb;
  b.describe(sb);
  sb.apply_yaml(sa.to_yaml(), "resolved");
  EXPECT_EQ(b.epochs, a.epochs);
  EXPECT_EQ(b.optim.lr, a.optim.lr);
  EXPECT_EQ(b.tags, a.tags);
  EXPECT_EQ(sb.to_yaml(), sa.to_yaml());
}

TEST(Config, MissingFileIsAnIoError) {
  TestConfig c;
  ConfigSchema s;
  c.describe(s);
  EXPECT_THROW(s.apply_yaml_file("/nonexistent/fer.yaml"), IoError);
}

}  // namespace
}  // namespace fer
