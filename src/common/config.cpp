#include "common/config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <optional>
#include <sstream>

#include "common/errors.h"

namespace fer {

struct ConfigSchema::Entry {
  std::string key;
  std::optional<FieldPtr> field;          // set for leaves
  std::unique_ptr<ConfigSchema> section;  // set for sections
};

struct ConfigAccess {
  static ConfigSchema::Entry* find(const ConfigSchema& schema, const std::string& key) {
    for (const auto& e : schema.entries_) {
      if (e->key == key) return e.get();
    }
    return nullptr;
  }
  static std::string known_keys(const ConfigSchema& schema) {
    std::string out;
    for (const auto& e : schema.entries_) out += (out.empty() ? "" : ", ") + e->key;
    return out;
  }
  static const std::vector<std::unique_ptr<ConfigSchema::Entry>>& entries(const ConfigSchema& s) {
    return s.entries_;
  }
};

namespace {

std::string where(const YAML::Node& node, const std::string& source) {
  const auto mark = node.Mark();
  if (mark.line < 0) return source;
  return source + ":" + std::to_string(mark.line + 1);
}

std::string describe_node(const YAML::Node& node) {
  if (node.IsNull()) return "nothing";
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  return "a mapping";
}

template <typename T>
T convert_scalar(const YAML::Node& node, const char* expected, const std::string& path,
                 const std::string& source) {
  if (!node.IsScalar()) {
    throw ConfigError(path + ": expected " + expected + ", got " + describe_node(node) + " (" +
                      where(node, source) + ")");
  }
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    throw ConfigError(path + ": expected " + expected + ", got " + describe_node(node) + " (" +
                      where(node, source) + ")");
  }
}

template <typename T>
std::vector<T> convert_list(const YAML::Node& node, const char* expected, const std::string& path,
                            const std::string& source) {
  if (!node.IsSequence()) {
    throw ConfigError(path + ": expected a list of " + expected + ", got " + describe_node(node) +
                      " (" + where(node, source) + ")");
  }
  std::vector<T> out;
  for (std::size_t i = 0; i < node.size(); ++i) {
    out.push_back(convert_scalar<T>(node[i], expected, path + "[" + std::to_string(i) + "]",
                                    source));
  }
  return out;
}

// Assigns a YAML value to one bound field, checking its type.
void assign(const ConfigSchema::FieldPtr& field, const YAML::Node& node, const std::string& path,
            const std::string& source) {
  std::visit(
      [&](auto* target) {
        using T = std::decay_t<decltype(*target)>;
        if constexpr (std::is_same_v<T, bool>) {
          *target = convert_scalar<bool>(node, "true or false", path, source);
        } else if constexpr (std::is_same_v<T, int>) {
          *target = convert_scalar<int>(node, "an integer", path, source);
        } else if constexpr (std::is_same_v<T, std::int64_t>) {
          *target = convert_scalar<std::int64_t>(node, "an integer", path, source);
        } else if constexpr (std::is_same_v<T, double>) {
          *target = convert_scalar<double>(node, "a number", path, source);
        } else if constexpr (std::is_same_v<T, std::string>) {
          *target = convert_scalar<std::string>(node, "a string", path, source);
        } else if constexpr (std::is_same_v<T, std::vector<int>>) {
          *target = convert_list<int>(node, "integers", path, source);
        } else if constexpr (std::is_same_v<T, std::vector<double>>) {
          *target = convert_list<double>(node, "numbers", path, source);
        } else {
          *target = convert_list<std::string>(node, "strings", path, source);
        }
      },
      field);
}

void apply_mapping(const ConfigSchema& schema, const YAML::Node& node, const std::string& prefix,
                   const std::string& source) {
  if (node.IsNull()) return;  // an empty section keeps its defaults
  if (!node.IsMap()) {
    throw ConfigError((prefix.empty() ? std::string("config") : prefix) +
                      ": expected a mapping of keys, got " + describe_node(node) + " (" +
                      where(node, source) + ")");
  }
  for (const auto& kv : node) {
    const std::string key = kv.first.Scalar();
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    ConfigSchema::Entry* entry = ConfigAccess::find(schema, key);
    if (!entry) {
      throw ConfigError("unknown config key '" + path + "' (" + where(kv.first, source) + ")",
                        "known keys" + (prefix.empty() ? std::string() : " in " + prefix) + ": " +
                            ConfigAccess::known_keys(schema));
    }
    if (entry->section) {
      apply_mapping(*entry->section, kv.second, path, source);
    } else {
      assign(*entry->field, kv.second, path, source);
    }
  }
}

void emit(YAML::Emitter& out, const ConfigSchema& schema) {
  out << YAML::BeginMap;
  for (const auto& e : ConfigAccess::entries(schema)) {
    out << YAML::Key << e->key << YAML::Value;
    if (e->section) {
      emit(out, *e->section);
      continue;
    }
    std::visit(
        [&](auto* value) {
          using T = std::decay_t<decltype(*value)>;
          if constexpr (std::is_same_v<T, double>) {
            std::ostringstream os;  // shortest round-tripping text
            os.precision(17);
            os << *value;
            out << os.str();
          } else if constexpr (std::is_same_v<T, std::vector<int>> ||
                               std::is_same_v<T, std::vector<double>> ||
                               std::is_same_v<T, std::vector<std::string>>) {
            out << YAML::Flow << *value;
          } else {
            out << *value;
          }
        },
        *e->field);
  }
  out << YAML::EndMap;
}

}  // namespace

ConfigSchema::ConfigSchema() = default;
ConfigSchema::~ConfigSchema() = default;

void ConfigSchema::add_field(const std::string& key, FieldPtr value) {
  auto entry = std::make_unique<Entry>();
  entry->key = key;
  entry->field = value;
  entries_.push_back(std::move(entry));
}

ConfigSchema& ConfigSchema::add_section(const std::string& key) {
  auto entry = std::make_unique<Entry>();
  entry->key = key;
  entry->section = std::make_unique<ConfigSchema>();
  entries_.push_back(std::move(entry));
  return *entries_.back()->section;
}

void ConfigSchema::apply_yaml(const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  apply_mapping(*this, root, "", source);
}

void ConfigSchema::apply_yaml_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw IoError("cannot read config file " + path.string(),
                  "check the path given to --config");
  }
  std::ostringstream text;
  text << in.rdbuf();
  apply_yaml(text.str(), path.string());
}

void ConfigSchema::apply_override(const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("override '" + assignment + "' is not of the form key.path=value");
  }
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  const std::string source = "--set " + path;
  const ConfigSchema* schema = this;
  std::string prefix;
  std::size_t start = 0;
  while (true) {
    const auto dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? dot : dot - start);
    const std::string here = prefix.empty() ? key : prefix + "." + key;
    Entry* entry = ConfigAccess::find(*schema, key);
    if (!entry) {
      throw ConfigError("unknown config key '" + here + "' in --set " + assignment,
                        "known keys" + (prefix.empty() ? std::string() : " in " + prefix) + ": " +
                            ConfigAccess::known_keys(*schema));
    }
    if (dot == std::string::npos) {
      YAML::Node node;
      try {
        node = YAML::Load(value);
      } catch (const YAML::Exception& e) {
        throw ConfigError("--set " + assignment + ": invalid value: " + e.msg);
      }
      if (entry->section) {
        apply_mapping(*entry->section, node, here, source);
      } else {
        assign(*entry->field, node, here, source);
      }
      return;
    }
    if (!entry->section) {
      throw ConfigError("config key '" + here + "' is a value, not a section, in --set " +
                        assignment);
    }
    schema = entry->section.get();
    prefix = here;
    start = dot + 1;
  }
}

std::string ConfigSchema::to_yaml() const {
  YAML::Emitter out;
  emit(out, *this);
  return std::string(out.c_str()) + "\n";
}

}  // namespace fer
