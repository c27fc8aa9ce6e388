// Typed configuration: YAML files and `--set a.b=c` overrides filling plain structs.
//
// A config struct lists its fields once, with their defaults in the struct itself:
//
//   struct OptimConfig {
//     double lr = 0.01;            // peak learning rate
//     std::string name = "adam";   // adam | adamw
//     void describe(ConfigSchema& s) { s.field("lr", &lr); s.field("name", &name); }
//   };
//
// ConfigSchema binds keys to those fields; apply_yaml()/apply_override() fill them and reject
// unknown keys and wrong types with a ConfigError naming the key path (and the file line). The
// schema holds pointers into the struct: it must not outlive it. Not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace fer {

class ConfigSchema {
 public:
  using FieldPtr = std::variant<bool*, int*, std::int64_t*, double*, std::string*,
                                std::vector<int>*, std::vector<double>*, std::vector<std::string>*>;

  ConfigSchema();
  ~ConfigSchema();
  ConfigSchema(const ConfigSchema&) = delete;
  ConfigSchema& operator=(const ConfigSchema&) = delete;

  // Binds `key` (no dots) to a field of one of the supported types.
  template <typename T>
  void field(const std::string& key, T* value) {
    add_field(key, FieldPtr(value));
  }

  // A nested section `key` described by `value->describe(ConfigSchema&)`.
  template <typename Struct>
  void section(const std::string& key, Struct* value) {
    value->describe(add_section(key));
  }

  // Applies a YAML mapping. `source` names where it came from (a file path) for error messages.
  void apply_yaml(const std::string& yaml_text, const std::string& source);
  // Reads and applies a YAML file; IoError when it cannot be read.
  void apply_yaml_file(const std::filesystem::path& path);
  // Applies one "a.b.c=value" override; the value is parsed as YAML ("[1, 2]" is a list).
  void apply_override(const std::string& assignment);
  // The current values as a YAML document, in declaration order (the resolved config).
  std::string to_yaml() const;

  struct Entry;  // defined in config.cpp

 private:
  void add_field(const std::string& key, FieldPtr value);
  ConfigSchema& add_section(const std::string& key);

  std::vector<std::unique_ptr<Entry>> entries_;
  friend struct ConfigAccess;
};

}  // namespace fer
