// kvtierctl search: parsing query vectors and printing hits.
#include <fstream>
#include <iomanip>
#include <sstream>

#include "cli/render.h"

namespace kvtierctl {
namespace {

kvtier::Result<std::pair<std::string, std::string>> split(const std::string& arg) {
  auto eq = arg.find('=');
  if (eq == std::string::npos || eq == 0)
    return kvtier::error(kvtier::Errc::kInvalidArgument,
                         "expected MODALITY=VALUE, got '" + arg + "'");
  return std::pair(arg.substr(0, eq), arg.substr(eq + 1));
}

kvtier::Result<std::vector<float>> parse_floats(std::string text) {
  if (!text.empty() && text[0] == '@') {
    std::ifstream in(text.substr(1));
    if (!in) return kvtier::error(kvtier::Errc::kInvalidArgument, "cannot read " + text.substr(1));
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  for (char& c : text)
    if (c == ',') c = ' ';
  std::istringstream in(text);
  std::vector<float> v;
  std::string tok;
  while (in >> tok) {
    try {
      v.push_back(std::stof(tok));
    } catch (const std::exception&) {
      return kvtier::error(kvtier::Errc::kInvalidArgument, "not a number: '" + tok + "'");
    }
  }
  if (v.empty()) return kvtier::error(kvtier::Errc::kInvalidArgument, "empty vector");
  return v;
}

}  // namespace

kvtier::Result<std::vector<kvtier::SearchQuery>> parse_queries(
    const std::vector<std::string>& queries, const std::vector<std::string>& thresholds,
    const std::vector<std::string>& weights) {
  std::vector<kvtier::SearchQuery> out;
  for (const auto& q : queries) {
    auto kv = split(q);
    if (!kv) return kv.status();
    auto values = parse_floats(kv->second);
    if (!values) return values.status();
    out.push_back(kvtier::SearchQuery{kv->first, std::move(values).value()});
  }
  auto apply = [&](const std::vector<std::string>& args, bool threshold) -> kvtier::Status {
    for (const auto& a : args) {
      auto kv = split(a);
      if (!kv) return kv.status();
      auto it = std::find_if(out.begin(), out.end(),
                             [&](const kvtier::SearchQuery& q) { return q.modality == kv->first; });
      if (it == out.end())
        return kvtier::error(kvtier::Errc::kInvalidArgument, "no query for '" + kv->first + "'");
      try {
        (threshold ? it->threshold : it->weight) = std::stof(kv->second);
      } catch (const std::exception&) {
        return kvtier::error(kvtier::Errc::kInvalidArgument, "not a number: '" + kv->second + "'");
      }
    }
    return {};
  };
  if (auto st = apply(thresholds, true); !st) return st;
  if (auto st = apply(weights, false); !st) return st;
  return out;
}

void print_search(std::ostream& os, const std::vector<kvtier::SearchQuery>& queries,
                  const kvtier::SearchResult& result, bool json) {
  if (json) {
    auto hits = nlohmann::json::array();
    for (const auto& h : result.hits) {
      nlohmann::json sims;
      for (size_t i = 0; i < queries.size() && i < h.similarities.size(); ++i)
        sims[queries[i].modality] = h.similarities[i];
      hits.push_back({{"key", h.key.hex()}, {"score", h.score}, {"similarities", sims}});
    }
    os << hits.dump(2) << "\n";
    return;
  }
  os << std::left << std::setw(5) << "RANK" << std::setw(34) << "KEY" << std::setw(9) << "SCORE";
  for (const auto& q : queries) os << std::setw(12) << q.modality;
  os << "\n";
  int rank = 1;
  for (const auto& h : result.hits) {
    os << std::left << std::setw(5) << rank++ << std::setw(34) << h.key.hex() << std::fixed
       << std::setprecision(4) << std::setw(9) << h.score;
    for (float s : h.similarities) os << std::setw(12) << s;
    os << "\n";
  }
  if (result.hits.empty()) os << "(no cached chunk passes every threshold)\n";
}

}  // namespace kvtierctl
