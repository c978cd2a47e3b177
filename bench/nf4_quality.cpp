// NF4 quality on synthetic KV: cosine similarity and relative error of K, V and of the
// attention output softmax(Q K^T / sqrt(d)) V (fp32), per-token vs per-channel keys, with and
// without double quant and with outlier channels kept exactly (keys only), on data with and
// without outlier key channels.  The last two columns isolate the key error (values exact)
// and the value error (keys exact).  Prints the table pasted into docs/nf4.md.  Values are
// always per token (bitsandbytes' layout).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/nf4.h"
#include "kernels/nf4_device.h"

namespace {

using namespace kvtier;

constexpr size_t kTokens = 1024, kDim = 128, kQueries = 64;

struct Compare {
  double cos, rel;
};

Compare compare(const std::vector<float>& ref, const std::vector<float>& got) {
  double dot = 0, rr = 0, gg = 0, diff = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    dot += double(ref[i]) * got[i];
    rr += double(ref[i]) * ref[i];
    gg += double(got[i]) * got[i];
    diff += (double(ref[i]) - got[i]) * (double(ref[i]) - got[i]);
  }
  return {dot / std::sqrt(rr * gg), std::sqrt(diff / rr)};
}

// Rounds to fp16, as the cache would hold it.
std::vector<float> fp16(std::vector<float> v) {
  for (float& x : v) x = nf4::dev::f16_to_f32(nf4::dev::f32_to_f16(x));
  return v;
}

// NF4 round trip of a [kTokens, kDim] fp16 tensor; *bpv gets encoded bytes per value (the
// header's exact total size, outlier sections included).
std::vector<float> nf4_trip(const std::vector<float>& v, Nf4Layout layout, bool dq, bool outliers,
                            double* bpv) {
  nf4::Params p{DType::kF16, layout, dq, kTokens, kDim};
  p.keep_outlier_channels = outliers;
  std::vector<uint16_t> src(v.size()), out(v.size());
  for (size_t i = 0; i < v.size(); ++i) src[i] = nf4::dev::f32_to_f16(v[i]);
  std::vector<std::byte> enc(nf4::encoded_size(p));
  Status st = nf4::encode(p, std::as_bytes(std::span(src)), enc);
  if (st) st = nf4::decode(enc, DType::kF16, std::as_writable_bytes(std::span(out)));
  if (!st) {
    std::fprintf(stderr, "nf4_quality: %s\n", st.to_string().c_str());
    std::exit(1);
  }
  *bpv = double(nf4::parse_header(enc)->total_size) / double(v.size());
  std::vector<float> back(v.size());
  for (size_t i = 0; i < v.size(); ++i) back[i] = nf4::dev::f16_to_f32(out[i]);
  return back;
}

std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v) {
  std::vector<float> out(kQueries * kDim, 0.0f), logits(kTokens);
  const float scale = 1.0f / std::sqrt(float(kDim));
  for (size_t i = 0; i < kQueries; ++i) {
    float mx = -INFINITY;
    for (size_t t = 0; t < kTokens; ++t) {
      float s = 0;
      for (size_t d = 0; d < kDim; ++d) s += q[i * kDim + d] * k[t * kDim + d];
      logits[t] = s * scale;
      mx = std::max(mx, logits[t]);
    }
    float sum = 0;
    for (float& l : logits) sum += (l = std::exp(l - mx));
    for (size_t t = 0; t < kTokens; ++t) {
      float w = logits[t] / sum;
      for (size_t d = 0; d < kDim; ++d) out[i * kDim + d] += w * v[t * kDim + d];
    }
  }
  return out;
}

}  // namespace

int main() {
  std::mt19937 rng(2024);
  std::normal_distribution<float> n01;
  auto gen = [&](size_t n, float sd) {
    std::vector<float> x(n);
    for (float& e : x) e = sd * n01(rng);
    return x;
  };
  // Keys: N(0,1) plus a per-channel bias (real keys are channel-structured); outliers: four
  // channels scaled 10-20x.  Queries N(0,1).
  std::vector<float> bias = gen(kDim, 0.5f);
  std::vector<float> keys = gen(kTokens * kDim, 1.0f);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] += bias[i % kDim];
  std::vector<float> outlier_keys = keys;
  const size_t outlier_ch[] = {3, 40, 77, 101};
  const float outlier_scale[] = {10.0f, 14.0f, 17.0f, 20.0f};
  for (size_t t = 0; t < kTokens; ++t) {
    for (int j = 0; j < 4; ++j) outlier_keys[t * kDim + outlier_ch[j]] *= outlier_scale[j];
  }
  std::vector<float> values = fp16(gen(kTokens * kDim, 1.0f));
  std::vector<float> queries = gen(kQueries * kDim, 1.0f);

  std::printf(
      "| keys | key layout | double quant | outlier ch. | K bytes/value | V bytes/value | K cos | "
      "K rel err | V cos | V rel err | attn cos | attn rel err | attn cos, V exact | attn cos, "
      "K exact |\n");
  std::printf("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  struct Row {
    Nf4Layout layout;
    bool dq, outliers;
  };
  const Row rows[] = {
      {Nf4Layout::kRowBlocks, false, false}, {Nf4Layout::kColumnBlocks, false, false},
      {Nf4Layout::kRowBlocks, true, false},  {Nf4Layout::kColumnBlocks, true, false},
      {Nf4Layout::kRowBlocks, false, true},  {Nf4Layout::kColumnBlocks, false, true},
      {Nf4Layout::kColumnBlocks, true, true}};
  for (int outliers = 0; outliers < 2; ++outliers) {
    std::vector<float> k = fp16(outliers ? outlier_keys : keys);
    std::vector<float> ref = attention(queries, k, values);
    for (const Row& row : rows) {
      double vbpv, kbpv;
      std::vector<float> v2 = nf4_trip(values, Nf4Layout::kRowBlocks, row.dq, false, &vbpv);
      std::vector<float> k2 = nf4_trip(k, row.layout, row.dq, row.outliers, &kbpv);
      Compare cv = compare(values, v2), ck = compare(k, k2);
      Compare ca = compare(ref, attention(queries, k2, v2));
      Compare ca_k = compare(ref, attention(queries, k2, values));  // key error only
      Compare ca_v = compare(ref, attention(queries, k, v2));       // value error only
      std::printf(
          "| %s | %s | %s | %s | %.4f | %.4f | %.5f | %.4f | %.5f | %.4f | %.5f | %.4f | %.5f | "
          "%.5f |\n",
          outliers ? "4 outlier ch. x10-20" : "no outliers",
          row.layout == Nf4Layout::kRowBlocks ? "per-token" : "per-channel", row.dq ? "yes" : "no",
          row.outliers ? "kept" : "no", kbpv, vbpv, ck.cos, ck.rel, cv.cos, cv.rel, ca.cos, ca.rel,
          ca_k.cos, ca_v.cos);
    }
  }
  std::printf(
      "\n%zu tokens x %zu dims, %zu queries; fp16 reference; bytes/value include the "
      "64-byte header (fp16 = 2).\n",
      kTokens, kDim, kQueries);
  return 0;
}
