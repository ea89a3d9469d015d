// Standalone correctness + speed harness for the Hopper forward kernel
// (jax_fa3::hopper::run_fwd), independent of JAX.
//
//   fwd_harness            full sweep + timing table
//   fwd_harness --quick    a few small cases (for compute-sanitizer)
//   fwd_harness --sweep    sweep only       fwd_harness --bench   timing only
//
// Correctness rule (FA3's test, fwd_reference.h): max|out - ref64| <= 2 *
// max|naive - ref64| + atol, where ref64 is float64 attention on the same
// (rounded) inputs and `naive` is the straightforward computation in the
// input precision. Outputs are poisoned with NaN first; an unwritten element
// fails. Varlen (packed) problems: fwd_varlen_harness.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cc/common/mask.h"
#include "cc/common/params.h"
#include "cc/hopper/api.h"

using jax_fa3::AttnParams;
using jax_fa3::DType;

#include "tests/cuda/harness_common.h"
#include "tests/cuda/fwd_reference.h"

static AttnParams make_params(const Case& c, void* q, void* k, void* v, void* o, float* lse) {
  AttnParams p;
  set_shape_and_mask(c, &p);
  p.softmax_scale = 1.0f / std::sqrt(float(c.d));
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = o;
  p.lse = lse;
  return p;
}

struct Result {
  bool ok;
  double err, naive_err, atol, lse_err, lse_naive_err;
  int64_t unwritten;
};

static Result run_case(const Case& c, std::mt19937& rng) {
  int64_t nq = int64_t(c.b) * c.sq * c.h * c.d, nk = int64_t(c.b) * c.sk * c.hk * c.d;
  int64_t nl = int64_t(c.b) * c.h * c.sq;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> hq(nq), hk(nk), hv(nk);
  std::vector<float> fq(nq), fk(nk), fv(nk);
  auto fill = [&](std::vector<uint16_t>& bits, std::vector<float>& f, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      bits[i] = to_bits(c.dt, nd(rng));
      f[i] = from_bits(c.dt, bits[i]);
    }
  };
  fill(hq, fq, nq);
  fill(hk, fk, nk);
  fill(hv, fv, nk);
  void *dq, *dk, *dv, *dout;
  float* dlse;
  CK(cudaMalloc(&dq, nq * 2));
  CK(cudaMalloc(&dk, nk * 2));
  CK(cudaMalloc(&dv, nk * 2));
  CK(cudaMalloc(&dout, nq * 2));
  CK(cudaMalloc(&dlse, nl * 4));
  CK(cudaMemcpy(dq, hq.data(), nq * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk, hk.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dv, hv.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemset(dout, 0xFF, nq * 2));  // 0xFFFF is NaN in bf16 and fp16
  CK(cudaMemset(dlse, 0xFF, nl * 4));  // NaN
  AttnParams p = make_params(c, dq, dk, dv, dout, dlse);
  std::string msg = jax_fa3::hopper::run_fwd(p, nullptr);
  if (!msg.empty()) {
    printf("run_fwd error: %s\n", msg.c_str());
    exit(3);
  }
  CK(cudaDeviceSynchronize());
  std::vector<uint16_t> hout(nq);
  std::vector<float> hlse(nl);
  CK(cudaMemcpy(hout.data(), dout, nq * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hlse.data(), dlse, nl * 4, cudaMemcpyDeviceToHost));
  CK(cudaFree(dq));
  CK(cudaFree(dk));
  CK(cudaFree(dv));
  CK(cudaFree(dout));
  CK(cudaFree(dlse));

  jax_fa3::MaskSpec ms = jax_fa3::MaskSpec::make(c.sq, c.sk, c.causal, c.wl, c.causal ? 0 : c.wr);
  double scale = 1.0 / std::sqrt(double(c.d));
  int ratio = c.h / c.hk;
  // Per row, reduced afterwards.
  int64_t rows = int64_t(c.b) * c.h * c.sq;
  std::vector<RowErr> errs(rows);
  parallel_for(rows, [&](int64_t r) {
    int i = int(r % c.sq);
    int hh = int((r / c.sq) % c.h);
    int bb = int(r / (int64_t(c.sq) * c.h));
    int hkk = hh / ratio;
    auto key = [&](int64_t j) { return &fk[((int64_t(bb) * c.sk + j) * c.hk + hkk) * c.d]; };
    auto val = [&](int64_t j) { return &fv[((int64_t(bb) * c.sk + j) * c.hk + hkk) * c.d]; };
    errs[r] = check_row(c.dt, c.d, c.sk, ms, i, scale, c.softcap,
                        &fq[((int64_t(bb) * c.sq + i) * c.h + hh) * c.d], key, val,
                        &hout[((int64_t(bb) * c.sq + i) * c.h + hh) * c.d],
                        hlse[(int64_t(bb) * c.h + hh) * c.sq + i]);
  });
  RowErr all;
  for (const RowErr& e : errs) all.merge(e);
  Result res{};
  res.err = all.out;
  res.naive_err = all.naive;
  res.atol = 2 * all.atol + 1e-5;
  res.lse_err = all.lse;
  res.lse_naive_err = all.lse_naive;
  res.unwritten = all.unwritten;
  res.ok = all.ok();
  return res;
}

static int g_only_d = 0;  // --d N: restrict sweep and bench to one head dim

static int sweep(bool quick) {
  std::mt19937 rng(1234);
  std::vector<Case> cases;
  const int dims[] = {64, 96, 128, 192, 256};
  struct Len { int sq, sk; };
  std::vector<Len> lens = {{1, 1}, {1, 1000}, {17, 113}, {113, 17}, {113, 1000}, {1000, 113},
                           {1000, 1000}, {1000, 999}};
  struct Feat { bool causal; int wl, wr; };
  std::vector<Feat> feats = {{false, -1, -1}, {true, -1, -1}, {false, 64, 32}, {true, 64, -1}};
  if (quick) {
    cases.push_back({192, DType::kBF16, 1, 113, 300, 4, 1, true, -1, -1, 0.f});
    cases.push_back({64, DType::kF16, 1, 200, 77, 2, 2, false, 64, 32, 30.f});
    cases.push_back({64, DType::kBF16, 1, 250, 333, 4, 2, false, -1, -1, 0.f});
    cases.push_back({256, DType::kBF16, 1, 130, 130, 2, 2, false, -1, -1, 0.f});
    // d128 unmasked: the wide key block under JAX_FA3_FWD_WIDE=1.
    cases.push_back({128, DType::kBF16, 1, 190, 400, 2, 2, false, -1, -1, 0.f});
  } else {
    for (int d : dims)
      for (auto f : feats)
        for (float cap : {0.f, 30.f})
          for (int ratio : {1, 4})
            for (auto l : lens) {
              int hk = ratio == 1 ? 2 : 1;
              cases.push_back({d, DType::kBF16, 2, l.sq, l.sk, hk * ratio, hk, f.causal, f.wl,
                               f.wr, cap});
            }
    // d128 unmasked with seqlen_k >= 8k: the wide key block (launch_fwd.h),
    // partial last block.
    cases.push_back({128, DType::kBF16, 1, 300, 8200, 4, 2, false, -1, -1, 0.f});
    cases.push_back({128, DType::kBF16, 1, 129, 8192, 2, 2, false, -1, -1, 30.f});
    cases.push_back({128, DType::kF16, 1, 200, 9000, 4, 1, false, -1, -1, 0.f});
    // fp16: every head dim, a few feature mixes.
    for (int d : dims) {
      cases.push_back({d, DType::kF16, 2, 1000, 999, 4, 1, false, -1, -1, 0.f});
      cases.push_back({d, DType::kF16, 2, 113, 1000, 2, 2, true, -1, -1, 30.f});
      cases.push_back({d, DType::kF16, 1, 1000, 113, 4, 4, false, 64, 32, 0.f});
    }
  }
  int fails = 0, ncases = 0;
  double worst_ratio = 0;
  for (const Case& c : cases) {
    if (g_only_d && c.d != g_only_d) continue;
    ++ncases;
    Result r = run_case(c, rng);
    double ratio = r.err / (2 * r.naive_err + r.atol);
    worst_ratio = std::max(worst_ratio, ratio);
    if (!r.ok || quick)
      printf("%s %s err=%.3g naive=%.3g atol=%.3g lse_err=%.3g lse_naive=%.3g unwritten=%lld\n",
             r.ok ? "ok  " : "FAIL", describe(c).c_str(), r.err, r.naive_err, r.atol, r.lse_err,
             r.lse_naive_err, (long long)r.unwritten);
    fails += !r.ok;
  }
  printf("sweep: %d cases, %d failed, worst err/(2*naive+atol) = %.3f\n", ncases, fails,
         worst_ratio);
  return fails;
}

static void bench() {
  struct Row { int d, s; bool causal; double tfs, ms; };
  std::vector<Row> rows;
  for (int d : {64, 128, 256})
    for (int s : {2048, 8192, 16384})
      if (!g_only_d || d == g_only_d)
      for (bool causal : {false, true}) {
        Case c{d, DType::kBF16, 16384 / s, s, s, 2048 / d, 2048 / d, causal, -1, -1, 0.f};
        int64_t nq = int64_t(c.b) * c.sq * c.h * c.d;
        int64_t nl = int64_t(c.b) * c.h * c.sq;
        std::vector<uint16_t> h(nq);
        std::mt19937 rng(7);
        std::normal_distribution<float> nd(0.f, 1.f);
        for (auto& x : h) x = to_bits(c.dt, nd(rng));
        void *dq, *dk, *dv, *dout;
        float* dlse;
        CK(cudaMalloc(&dq, nq * 2));
        CK(cudaMalloc(&dk, nq * 2));
        CK(cudaMalloc(&dv, nq * 2));
        CK(cudaMalloc(&dout, nq * 2));
        CK(cudaMalloc(&dlse, nl * 4));
        CK(cudaMemcpy(dq, h.data(), nq * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dk, h.data(), nq * 2, cudaMemcpyHostToDevice));
        std::reverse(h.begin(), h.end());
        CK(cudaMemcpy(dv, h.data(), nq * 2, cudaMemcpyHostToDevice));
        AttnParams p = make_params(c, dq, dk, dv, dout, dlse);
        cudaStream_t st;
        CK(cudaStreamCreate(&st));
        double ms = median_ms([&] {
          std::string m = jax_fa3::hopper::run_fwd(p, st);
          if (!m.empty()) { printf("bench error %s\n", m.c_str()); exit(3); }
        }, st, 5, 25);
        double flops = 4.0 * c.b * c.h * double(c.sq) * c.sk * c.d * (causal ? 0.5 : 1.0);
        rows.push_back({d, s, causal, flops / (ms * 1e-3) / 1e12, ms});
        CK(cudaFree(dq));
        CK(cudaFree(dk));
        CK(cudaFree(dv));
        CK(cudaFree(dout));
        CK(cudaFree(dlse));
        CK(cudaStreamDestroy(st));
      }
  printf("\n%-5s %-7s %-7s %10s %9s\n", "hdim", "seqlen", "causal", "ms", "TF/s");
  for (auto& r : rows)
    printf("%-5d %-7d %-7d %10.3f %9.1f\n", r.d, r.s, int(r.causal), r.ms, r.tfs);
}

int main(int argc, char** argv) { return fwd_harness_main(argc, argv, &g_only_d, sweep, bench); }
