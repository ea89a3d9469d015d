// The forward harnesses' reference and error rule (fwd_harness.cu,
// fwd_varlen_harness.cu): one query row at a time, so the dense and the
// packed layouts share it.
//
// FA3's rule: max|out - ref64| <= 2 * max|naive - ref64| + atol, where ref64
// is float64 attention on the same (rounded) inputs and `naive` is the
// straightforward computation in the input precision (S and P rounded to the
// input dtype, fp32 accumulation), atol = 2x the dtype's rounding error at
// the output's magnitude. LSE likewise against a naive fp32 LSE, and exactly
// -inf for a row that sees no key. A NaN in the kernel's row (outputs are
// poisoned with NaN first) counts as unwritten.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "cc/common/mask.h"
#include "tests/cuda/harness_common.h"

template <class F>
static void parallel_for(int64_t n, F f) {
  int nt = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> ts;
  for (int t = 0; t < nt; ++t)
    ts.emplace_back([&, t] {
      for (int64_t i = t; i < n; i += nt) f(i);
    });
  for (auto& t : ts) t.join();
}

// Per-row maxima; reduce over rows with RowErr::merge, judge with ok().
struct RowErr {
  double out = 0, naive = 0, atol = 0, lse = 0, lse_naive = 0;
  int64_t unwritten = 0;

  void merge(const RowErr& r) {
    out = std::max(out, r.out);
    naive = std::max(naive, r.naive);
    atol = std::max(atol, r.atol);
    lse = std::max(lse, r.lse);
    lse_naive = std::max(lse_naive, r.lse_naive);
    unwritten += r.unwritten;
  }
  double tol() const { return 2 * naive + 2 * atol + 1e-5; }
  bool ok() const {
    return out <= tol() && lse <= 2 * lse_naive + 1e-3 && unwritten == 0;
  }
};

// Row i of a problem with sk keys under mask ms: q is the row's query
// (d floats), key(j) / val(j) key j's vectors, out the kernel's d outputs
// (bits of dtype dt), got_lse its LSE.
template <class KeyFn, class ValFn>
static RowErr check_row(DType dt, int d, int64_t sk, const jax_fa3::MaskSpec& ms, int64_t i,
                        double scale, float softcap, const float* q, KeyFn key, ValFn val,
                        const uint16_t* out, float got_lse) {
  std::vector<double> s(sk), o(d, 0.0);
  std::vector<float> sn(sk), on(d, 0.f);
  double mx = -INFINITY;
  float mxn = -INFINITY;
  for (int64_t j = 0; j < sk; ++j) {
    if (!ms.visible(i, j)) {
      s[j] = -INFINITY;
      sn[j] = -INFINITY;
      continue;
    }
    const float* k = key(j);
    double acc = 0;
    float accf = 0;
    for (int x = 0; x < d; ++x) {
      acc += double(q[x]) * k[x];
      accf += q[x] * k[x];
    }
    acc *= scale;
    float an = round_to(dt, round_to(dt, accf) * float(scale));
    if (softcap > 0) {
      acc = softcap * std::tanh(acc / softcap);
      an = round_to(dt, softcap * std::tanh(an / softcap));
    }
    s[j] = acc;
    sn[j] = an;
    mx = std::max(mx, acc);
    mxn = std::max(mxn, an);
  }
  double sum = 0;
  float sumn = 0;
  for (int64_t j = 0; j < sk; ++j) {
    if (s[j] == -INFINITY) continue;
    double pj = std::exp(s[j] - mx);
    float pn = std::exp(sn[j] - mxn);
    sum += pj;
    sumn += pn;
    s[j] = pj;
    sn[j] = pn;
  }
  double lse_ref = sum > 0 ? mx + std::log(sum) : -INFINITY;
  float lse_naive = sumn > 0 ? mxn + std::log(sumn) : -INFINITY;
  for (int64_t j = 0; j < sk; ++j) {
    if (sum == 0 || s[j] == -INFINITY) continue;
    const float* v = val(j);
    double pj = s[j] / sum;
    float pn = round_to(dt, sn[j] / sumn);
    for (int x = 0; x < d; ++x) {
      o[x] += pj * v[x];
      on[x] += pn * v[x];
    }
  }
  RowErr e;
  for (int x = 0; x < d; ++x) {
    float got = from_bits(dt, out[x]);
    if (std::isnan(got)) {
      ++e.unwritten;
      continue;
    }
    e.out = std::max(e.out, std::fabs(got - o[x]));
    e.naive = std::max(e.naive, std::fabs(double(round_to(dt, on[x])) - o[x]));
    double rt = round_to(dt, float(o[x] + 0.3)) - 0.3;
    e.atol = std::max(e.atol, std::fabs(rt - o[x]));
  }
  if (std::isnan(got_lse)) {
    ++e.unwritten;
  } else if (lse_ref == -INFINITY) {
    e.lse = got_lse == -INFINITY ? 0 : INFINITY;
  } else {
    e.lse = std::fabs(got_lse - lse_ref);
    e.lse_naive = std::fabs(lse_naive - lse_ref);
  }
  return e;
}
