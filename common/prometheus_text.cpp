#include "common/prometheus_text.h"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace kvtier {
namespace {

bool name_char(char c, bool first, bool colon) {
  const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  return alpha || (colon && c == ':') || (!first && c >= '0' && c <= '9');
}

void append_escaped(std::string& out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// Go's strconv.ParseFloat reads all of these; integers print without a fraction.
void append_double(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, ec == std::errc() ? end : buf);
  }
}

void append_number(std::string& out, Number v) {
  if (v.integral())
    out += std::to_string(v.u64());
  else
    append_double(out, v.value());
}

// {a="x",b="y"} plus an optional extra label (le), or "" without any.
std::string render_labels(Labels labels, std::string_view extra_name = {},
                          std::string_view extra_value = {}) {
  if (labels.empty() && extra_name.empty()) return {};
  std::string out = "{";
  bool first = true;
  auto add = [&](std::string_view name, std::string_view value) {
    if (!first) out += ',';
    first = false;
    out += name;
    out += "=\"";
    append_escaped(out, value, true);
    out += '"';
  };
  for (const Label& l : labels) add(l.name, l.value);
  if (!extra_name.empty()) add(extra_name, extra_value);
  out += '}';
  return out;
}

const char* type_name(int t) {
  static const char* names[] = {"counter", "gauge", "histogram"};
  return names[t];
}

}  // namespace

bool PrometheusText::valid_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (!name_char(name[i], i == 0, true)) return false;
  return true;
}

bool PrometheusText::valid_label_name(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (!name_char(name[i], i == 0, false)) return false;
  return true;
}

PrometheusText::Family* PrometheusText::family(const Metric& m, Type type, Labels labels,
                                               std::string& rendered) {
  bool ok = valid_metric_name(m.name);
  for (const Label& l : labels) ok = ok && valid_label_name(l.name) && l.name != "le";
  if (!ok) {
    ++dropped_;
    return nullptr;
  }
  auto [it, added] = by_name_.try_emplace(std::string(m.name), families_.size());
  if (added) families_.push_back({std::string(m.name), std::string(m.help), type, {}, {}});
  Family& f = families_[it->second];
  rendered = render_labels(labels);
  if (f.type != type ||
      std::find(f.label_sets.begin(), f.label_sets.end(), rendered) != f.label_sets.end()) {
    ++dropped_;
    return nullptr;
  }
  f.label_sets.push_back(rendered);
  return &f;
}

void PrometheusText::counter(const Metric& m, Labels labels, Number value) {
  std::string l;
  Family* f = family(m, Type::kCounter, labels, l);
  if (f == nullptr) return;
  f->samples += f->name + l + ' ';
  append_number(f->samples, value);
  f->samples += '\n';
}

void PrometheusText::gauge(const Metric& m, Labels labels, Number value) {
  std::string l;
  Family* f = family(m, Type::kGauge, labels, l);
  if (f == nullptr) return;
  f->samples += f->name + l + ' ';
  append_number(f->samples, value);
  f->samples += '\n';
}

void PrometheusText::histogram(const Metric& m, Labels labels, const HistogramData& h) {
  std::string l;
  Family* f = family(m, Type::kHistogram, labels, l);
  if (f == nullptr) return;
  std::string& s = f->samples;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    if (i < h.counts.size()) cumulative += h.counts[i];
    std::string le;
    append_double(le, h.bounds[i]);
    s += f->name + "_bucket" + render_labels(labels, "le", le) + ' ' + std::to_string(cumulative) +
         '\n';
  }
  for (size_t i = h.bounds.size(); i < h.counts.size(); ++i) cumulative += h.counts[i];
  s += f->name + "_bucket" + render_labels(labels, "le", "+Inf") + ' ' +
       std::to_string(cumulative) + '\n';
  s += f->name + "_sum" + l + ' ';
  append_double(s, h.sum);
  s += '\n' + f->name + "_count" + l + ' ' + std::to_string(cumulative) + '\n';
}

std::string PrometheusText::text() const {
  std::string out;
  for (const Family& f : families_) {
    out += "# HELP " + f.name + ' ';
    append_escaped(out, f.help, false);
    out += "\n# TYPE " + f.name + ' ' + type_name(static_cast<int>(f.type)) + '\n';
    out += f.samples;
  }
  return out;
}

}  // namespace kvtier
