// Standalone correctness + speed harness for the Hopper forward kernel on
// variable-length (packed) sequences (AttnParams::is_varlen, params.h),
// independent of JAX.
//
//   fwd_varlen_harness            sweep + timing
//   fwd_varlen_harness --quick    a few small cases (for compute-sanitizer)
//   fwd_varlen_harness --sweep    sweep only     --bench   timing only
//   --d N                         sweep only head dim N
//
// Each case packs random documents: empty ones (0 rows on either side),
// length 1, lengths off the tile sizes, seqused below the allocation (the gap
// holds random finite data), rows after cu_seqlens[-1], max_seqlen above the
// longest sequence. The reference is each sequence alone in float64, its
// mask on its attended lengths (causal bottom-right per sequence), with
// FA3's rule (fwd_reference.h). out and lse are poisoned with NaN; every row
// outside the sequences' attended parts must come back exactly 0 with lse
// -inf. A third of the cases run the scheduler's plain round robin
// (JAX_FA3_VARLEN_PLAIN_RR=1) instead of its sorted snake order.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cc/common/mask.h"
#include "cc/common/params.h"
#include "cc/hopper/api.h"
#include "tests/cuda/harness_common.h"
#include "tests/cuda/fwd_reference.h"

namespace {

struct VSeq {
  int alloc_q, used_q, alloc_k, used_k;
};

struct VCase {
  int d;
  DType dt;
  int h, hk;
  bool causal;
  int wl, wr;
  float softcap;
  std::vector<VSeq> seqs;
  bool has_used_q, has_used_k;  // pass seqused_q / seqused_k
  int extra_q, extra_k;         // rows after cu_seqlens[-1]
  int slack_q, slack_k;         // max_seqlen = longest attended length + slack
  bool plain_rr;                // JAX_FA3_VARLEN_PLAIN_RR=1
};

std::string describe(const VCase& c) {
  int tq = 0, tk = 0, mq = 0, mk = 0;
  for (const VSeq& s : c.seqs) {
    tq += s.alloc_q;
    tk += s.alloc_k;
    mq = std::max(mq, s.used_q);
    mk = std::max(mk, s.used_k);
  }
  char buf[256];
  snprintf(buf, sizeof buf,
           "d=%d %s h=%d hk=%d causal=%d win=(%d,%d) cap=%g seqs=%zu rows_q=%d+%d rows_k=%d+%d "
           "max=(%d,%d) used=(%d,%d)%s",
           c.d, c.dt == DType::kBF16 ? "bf16" : "fp16", c.h, c.hk, c.causal, c.wl, c.wr,
           c.softcap, c.seqs.size(), tq, c.extra_q, tk, c.extra_k, mq, mk, c.has_used_q,
           c.has_used_k, c.plain_rr ? " plain-rr" : "");
  return buf;
}

// Device buffers of one packed problem.
struct Packed {
  std::vector<int32_t> cu_q, cu_k, used_q, used_k;
  int64_t total_q = 0, total_k = 0, max_q = 0, max_k = 0;
  void *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr;
  float* lse = nullptr;
  int32_t *d_cu_q = nullptr, *d_cu_k = nullptr, *d_used_q = nullptr, *d_used_k = nullptr;
};

void* dev_alloc(size_t bytes) {
  void* p;
  CK(cudaMalloc(&p, std::max<size_t>(bytes, 16)));
  return p;
}

int32_t* upload_ints(const std::vector<int32_t>& x) {
  int32_t* p = static_cast<int32_t*>(dev_alloc(x.size() * 4));
  CK(cudaMemcpy(p, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  return p;
}

void layout(const VCase& c, Packed* P) {
  int n = int(c.seqs.size());
  P->cu_q.assign(n + 1, 0);
  P->cu_k.assign(n + 1, 0);
  P->used_q.resize(n);
  P->used_k.resize(n);
  for (int b = 0; b < n; ++b) {
    const VSeq& s = c.seqs[b];
    P->cu_q[b + 1] = P->cu_q[b] + s.alloc_q;
    P->cu_k[b + 1] = P->cu_k[b] + s.alloc_k;
    P->used_q[b] = c.has_used_q ? s.used_q : s.alloc_q;
    P->used_k[b] = c.has_used_k ? s.used_k : s.alloc_k;
    P->max_q = std::max<int64_t>(P->max_q, P->used_q[b]);
    P->max_k = std::max<int64_t>(P->max_k, P->used_k[b]);
  }
  P->max_q += c.slack_q;
  P->max_k += c.slack_k;
  P->total_q = P->cu_q[n] + c.extra_q;
  P->total_k = P->cu_k[n] + c.extra_k;
}

AttnParams make_params(const VCase& c, const Packed& P) {
  AttnParams p;
  // The fields as the FFI handler sets them (cc/ffi/fill_varlen.cc).
  Case shape{c.d, c.dt, int(c.seqs.size()), int(P.max_q), int(P.max_k), c.h, c.hk,
             c.causal, c.wl, c.wr, c.softcap};
  set_varlen_shape_and_mask(shape, P.total_q, P.total_k, P.d_cu_q, P.d_cu_k,
                            c.has_used_q ? P.d_used_q : nullptr,
                            c.has_used_k ? P.d_used_k : nullptr, &p);
  p.softmax_scale = 1.0f / std::sqrt(float(c.d));
  p.q = P.q;
  p.k = P.k;
  p.v = P.v;
  p.out = P.out;
  p.lse = P.lse;
  return p;
}

std::string run_fwd_mode(const AttnParams& p, bool plain_rr, cudaStream_t st) {
  if (plain_rr) setenv("JAX_FA3_VARLEN_PLAIN_RR", "1", 1);
  std::string m = jax_fa3::hopper::run_fwd(p, st);
  if (plain_rr) unsetenv("JAX_FA3_VARLEN_PLAIN_RR");
  return m;
}

void free_packed(Packed* P) {
  for (void* x : {P->q, P->k, P->v, P->out, static_cast<void*>(P->lse),
                  static_cast<void*>(P->d_cu_q), static_cast<void*>(P->d_cu_k),
                  static_cast<void*>(P->d_used_q), static_cast<void*>(P->d_used_k)})
    CK(cudaFree(x));
}

struct VResult {
  RowErr err;
  int64_t bad_fill = 0;  // unattended rows not exactly 0 / -inf
  int64_t rows = 0;      // attended (row, head) pairs checked
  bool ok() const { return err.ok() && bad_fill == 0; }
};

VResult run_case(const VCase& c, std::mt19937& rng) {
  Packed P;
  layout(c, &P);
  int64_t nq = P.total_q * c.h * c.d, nk = P.total_k * c.hk * c.d, nl = P.total_q * c.h;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> hq(nq), hk(nk), hv(nk);
  std::vector<float> fq(nq), fk(nk), fv(nk);
  auto fill = [&](std::vector<uint16_t>& bits, std::vector<float>& f) {
    for (size_t i = 0; i < bits.size(); ++i) {
      bits[i] = to_bits(c.dt, nd(rng));
      f[i] = from_bits(c.dt, bits[i]);
    }
  };
  fill(hq, fq);
  fill(hk, fk);
  fill(hv, fv);
  P.q = dev_alloc(nq * 2);
  P.k = dev_alloc(nk * 2);
  P.v = dev_alloc(nk * 2);
  P.out = dev_alloc(nq * 2);
  P.lse = static_cast<float*>(dev_alloc(nl * 4));
  CK(cudaMemcpy(P.q, hq.data(), nq * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(P.k, hk.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(P.v, hv.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemset(P.out, 0xFF, nq * 2));  // NaN in bf16 and fp16
  CK(cudaMemset(P.lse, 0xFF, nl * 4));  // NaN
  P.d_cu_q = upload_ints(P.cu_q);
  P.d_cu_k = upload_ints(P.cu_k);
  P.d_used_q = upload_ints(P.used_q);
  P.d_used_k = upload_ints(P.used_k);
  std::string msg = run_fwd_mode(make_params(c, P), c.plain_rr, nullptr);
  if (!msg.empty()) {
    printf("run_fwd error: %s\n  %s\n", msg.c_str(), describe(c).c_str());
    exit(3);
  }
  CK(cudaDeviceSynchronize());
  std::vector<uint16_t> hout(nq);
  std::vector<float> hlse(nl);
  CK(cudaMemcpy(hout.data(), P.out, nq * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hlse.data(), P.lse, nl * 4, cudaMemcpyDeviceToHost));
  free_packed(&P);

  // Sequence of each packed query row, -1 where unattended.
  std::vector<int> seq_of(P.total_q, -1);
  for (size_t b = 0; b < c.seqs.size(); ++b)
    for (int i = 0; i < P.used_q[b]; ++i) seq_of[P.cu_q[b] + i] = int(b);
  double scale = 1.0 / std::sqrt(double(c.d));
  int ratio = c.h / c.hk;
  int64_t pairs = P.total_q * c.h;
  std::vector<RowErr> errs(pairs);
  std::vector<int64_t> bad(pairs, 0);
  parallel_for(pairs, [&](int64_t x) {
    int64_t r = x / c.h;
    int hh = int(x % c.h), hkk = hh / ratio;
    const uint16_t* out = &hout[(r * c.h + hh) * c.d];
    float got_lse = hlse[int64_t(hh) * P.total_q + r];
    int b = seq_of[r];
    if (b < 0) {
      bool zero = got_lse == -INFINITY;
      for (int e = 0; e < c.d; ++e) zero = zero && from_bits(c.dt, out[e]) == 0.f;
      bad[x] = !zero;
      return;
    }
    int64_t ks = P.cu_k[b], lq = P.used_q[b], lk = P.used_k[b];
    jax_fa3::MaskSpec ms =
        jax_fa3::MaskSpec::make(lq, lk, c.causal, c.wl, c.causal ? 0 : c.wr);
    auto key = [&](int64_t j) { return &fk[((ks + j) * c.hk + hkk) * c.d]; };
    auto val = [&](int64_t j) { return &fv[((ks + j) * c.hk + hkk) * c.d]; };
    errs[x] = check_row(c.dt, c.d, lk, ms, r - P.cu_q[b], scale, c.softcap,
                        &fq[(r * c.h + hh) * c.d], key, val, out, got_lse);
  });
  VResult res;
  for (int64_t x = 0; x < pairs; ++x) {
    res.err.merge(errs[x]);
    res.bad_fill += bad[x];
    res.rows += seq_of[x / c.h] >= 0;
  }
  return res;
}

// Lengths that stress the tiles: 0, 1, around multiples of 64, or random.
int pick_len(std::mt19937& rng, int max_len) {
  int u = int(rng() % 100);
  if (u < 12) return 0;
  if (u < 20) return 1;
  if (u < 40) {
    int m = 64 * (1 + int(rng() % 4)) + int(rng() % 3) - 1;  // 63..257
    return std::min(m, max_len);
  }
  return 2 + int(rng() % std::max(1, max_len - 1));
}

int used_of(std::mt19937& rng, int alloc) {
  if (alloc == 0 || rng() % 3 == 0) return alloc;
  return alloc - int(rng() % (std::min(alloc, 40) + 1));
}

// kind 0: self-attention documents (alloc_q == alloc_k); 1: independent q
// and k lengths; 2: 33-70 short sequences (the walk's multi-chunk path, more
// units than CTAs); 3: 1-3 long sequences; 4: 16-32 sequences and 8 heads
// (sorted walk, several rounds).
VCase random_case(std::mt19937& rng, int d, DType dt, bool causal, int wl, int wr, int kind) {
  static const int heads[][2] = {{2, 2}, {4, 1}, {4, 2}, {3, 1}, {2, 1}};
  VCase c{};
  c.d = d;
  c.dt = dt;
  int hi = int(rng() % 5);
  c.h = heads[hi][0];
  c.hk = heads[hi][1];
  if (kind == 2 || kind == 4) {
    c.h = 8;
    c.hk = rng() % 2 ? 8 : 2;
  }
  c.causal = causal;
  c.wl = wl;
  c.wr = wr;
  c.softcap = rng() % 3 == 0 ? 30.f : 0.f;
  int n = kind == 2 ? 33 + int(rng() % 38) : kind == 3 ? 1 + int(rng() % 3)
          : kind == 4 ? 16 + int(rng() % 17) : 1 + int(rng() % 8);
  for (int b = 0; b < n; ++b) {
    VSeq s;
    if (kind == 3) {
      s.alloc_q = 300 + int(rng() % 400);
      s.alloc_k = rng() % 2 ? s.alloc_q : 300 + int(rng() % 400);
    } else if (kind == 4) {
      s.alloc_q = s.alloc_k = 60 + int(rng() % 240);
    } else {
      int max_len = kind == 2 ? 90 : kind == 1 ? 300 : 400;
      s.alloc_q = pick_len(rng, max_len);
      s.alloc_k = kind == 1 ? pick_len(rng, max_len) : s.alloc_q;
    }
    s.used_q = used_of(rng, s.alloc_q);
    s.used_k = used_of(rng, s.alloc_k);
    c.seqs.push_back(s);
  }
  c.has_used_q = rng() % 2;
  c.has_used_k = rng() % 2;
  static const int extras[] = {0, 0, 5, 130};
  c.extra_q = extras[rng() % 4];
  c.extra_k = extras[rng() % 4];
  static const int slacks[] = {0, 0, 7, 200};
  c.slack_q = slacks[rng() % 4];
  c.slack_k = slacks[rng() % 4];
  return c;
}

// Hand-made edge cases: no keys at all, no attended key or query, nothing
// packed, a single 1x1 sequence, causal rows that see no key.
std::vector<VCase> edge_cases(int d) {
  std::vector<VCase> v;
  VCase base{d, DType::kBF16, 4, 2, false, -1, -1, 0.f, {}, false, false, 0, 0, 0, 0, false};
  VCase c = base;
  c.seqs = {{5, 5, 0, 0}, {130, 130, 0, 0}};  // total_k == 0
  c.extra_q = 3;
  v.push_back(c);
  c = base;
  c.seqs = {{50, 50, 40, 0}, {0, 0, 20, 0}};  // max_seqlen_k == 0, total_k > 0
  c.has_used_k = true;
  v.push_back(c);
  c = base;
  c.seqs = {{40, 0, 40, 40}, {0, 0, 9, 9}};  // max_seqlen_q == 0
  c.has_used_q = true;
  c.causal = true;
  v.push_back(c);
  c = base;
  c.seqs = {{0, 0, 30, 30}, {0, 0, 0, 0}};  // total_q == 0
  v.push_back(c);
  c = base;
  c.seqs = {{1, 1, 1, 1}};
  c.causal = true;
  v.push_back(c);
  c = base;
  c.seqs = {{300, 300, 50, 50}, {0, 0, 0, 0}, {17, 17, 200, 190}};  // causal, len_q > len_k
  c.causal = true;
  c.has_used_k = true;
  c.softcap = 30.f;
  v.push_back(c);
  return v;
}

int g_only_d = 0;

int sweep(bool quick) {
  std::mt19937 rng(4321);
  std::vector<VCase> cases;
  const int dims[] = {64, 96, 128, 192, 256};
  struct Feat { bool causal; int wl, wr; };
  const Feat feats[] = {{false, -1, -1}, {true, -1, -1}, {false, 64, 32}, {true, 64, -1}};
  if (quick) {
    VCase c = random_case(rng, 128, DType::kBF16, true, -1, -1, 0);
    c.has_used_q = c.has_used_k = true;
    c.extra_q = c.extra_k = 5;
    cases.push_back(c);
    c = random_case(rng, 64, DType::kF16, false, 64, 32, 2);
    c.plain_rr = true;
    cases.push_back(c);
    cases.push_back(random_case(rng, 256, DType::kBF16, false, -1, -1, 1));
    cases.push_back(random_case(rng, 192, DType::kBF16, true, 64, -1, 4));
    cases.push_back(edge_cases(96)[0]);
  } else {
    int idx = 0;
    for (int d : dims) {
      for (const Feat& f : feats)
        for (int kind = 0; kind < 5; ++kind) {
          DType dt = idx % 4 == 3 ? DType::kF16 : DType::kBF16;
          VCase c = random_case(rng, d, dt, f.causal, f.wl, f.wr, kind);
          c.plain_rr = idx % 3 == 2;
          cases.push_back(c);
          ++idx;
        }
      for (VCase c : edge_cases(d)) cases.push_back(c);
    }
  }
  int fails = 0, ncases = 0;
  double worst = 0;
  int64_t rows = 0;
  for (const VCase& c : cases) {
    if (g_only_d && c.d != g_only_d) continue;
    ++ncases;
    VResult r = run_case(c, rng);
    rows += r.rows;
    worst = std::max(worst, r.err.out / r.err.tol());
    if (!r.ok() || quick)
      printf("%s %s err=%.3g naive=%.3g atol=%.3g lse_err=%.3g lse_naive=%.3g unwritten=%lld "
             "bad_fill=%lld\n",
             r.ok() ? "ok  " : "FAIL", describe(c).c_str(), r.err.out, r.err.naive,
             2 * r.err.atol + 1e-5, r.err.lse, r.err.lse_naive, (long long)r.err.unwritten,
             (long long)r.bad_fill);
    fails += !r.ok();
  }
  printf("varlen sweep: %d cases (%lld attended row-heads), %d failed, worst "
         "err/(2*naive+atol) = %.3f\n",
         ncases, (long long)rows, fails, worst);
  return fails;
}

// Median ms of run_fwd over 25 calls after 5 warm-up calls.
double time_ms(const AttnParams& p, bool plain_rr) {
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  double ms = median_ms([&] {
    std::string m = run_fwd_mode(p, plain_rr, st);
    if (!m.empty()) { printf("bench error %s\n", m.c_str()); exit(3); }
  }, st, 5, 25);
  CK(cudaStreamDestroy(st));
  return ms;
}

// 16k tokens of documents with lengths uniform in [lo, hi] (the last one cut
// to fit), d128, 16 heads (hidden 2048), bf16; against the dense kernel at
// the documents' mean length, batch = 16384 / that.
void bench() {
  const int d = 128, h = 16, total = 16384;
  printf("\n%-26s %-7s %-9s %9s %9s\n", "problem", "causal", "schedule", "ms", "TF/s");
  struct Dist { int lo, hi, dense_s; };
  for (Dist dist : {Dist{128, 4096, 2048}, Dist{128, 1024, 512}}) {
    std::mt19937 rng(2024);
    VCase c{d, DType::kBF16, h, h, false, -1, -1, 0.f, {}, false, false, 0, 0, 0, 0, false};
    int sum = 0;
    std::string lens;
    while (sum < total) {
      int l = std::min(dist.lo + int(rng() % (dist.hi - dist.lo + 1)), total - sum);
      c.seqs.push_back({l, l, l, l});
      sum += l;
      if (dist.hi > 1024) lens += " " + std::to_string(l);
    }
    if (!lens.empty()) printf("documents:%s\n", lens.c_str());
    Packed P;
    layout(c, &P);
    int64_t n = P.total_q * h * d;
    std::vector<uint16_t> hx(n);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& x : hx) x = to_bits(c.dt, nd(rng));
    P.q = dev_alloc(n * 2);
    P.k = dev_alloc(n * 2);
    P.v = dev_alloc(n * 2);
    P.out = dev_alloc(n * 2);
    P.lse = static_cast<float*>(dev_alloc(P.total_q * h * 4));
    CK(cudaMemcpy(P.q, hx.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(P.k, hx.data(), n * 2, cudaMemcpyHostToDevice));
    std::reverse(hx.begin(), hx.end());
    CK(cudaMemcpy(P.v, hx.data(), n * 2, cudaMemcpyHostToDevice));
    P.d_cu_q = upload_ints(P.cu_q);
    P.d_cu_k = upload_ints(P.cu_k);
    P.d_used_q = upload_ints(P.used_q);
    P.d_used_k = upload_ints(P.used_k);
    char name[64];
    snprintf(name, sizeof name, "varlen %zu docs [%d,%d]", c.seqs.size(), dist.lo, dist.hi);
    for (bool causal : {false, true}) {
      c.causal = causal;
      double pairs = 0;
      for (const VSeq& s : c.seqs)
        pairs += causal ? 0.5 * s.used_q * (s.used_q + 1.0) : double(s.used_q) * s.used_k;
      double flops = 4.0 * h * d * pairs;
      AttnParams p = make_params(c, P);
      for (bool rr : {false, true}) {
        double ms = time_ms(p, rr);
        printf("%-26s %-7d %-9s %9.3f %9.1f\n", name, int(causal), rr ? "plain-rr" : "sorted",
               ms, flops / (ms * 1e-3) / 1e12);
      }
      // The dense kernel at the mean length, on the same buffers.
      AttnParams q = p;
      int s = dist.dense_s;
      q.is_varlen = false;
      q.batch = total / s;
      q.seqlen_q = q.seqlen_k = s;
      q.q_batch_stride = int64_t(s) * h * d;
      q.k_batch_stride = int64_t(s) * h * d;
      q.lse_batch_stride = int64_t(h) * s;
      q.lse_head_stride = s;
      double ms = time_ms(q, false);
      double dflops = 4.0 * q.batch * h * double(s) * s * d * (causal ? 0.5 : 1.0);
      char dn[64];
      snprintf(dn, sizeof dn, "dense b=%d s=%d", total / s, s);
      printf("%-26s %-7d %-9s %9.3f %9.1f\n", dn, int(causal), "-", ms,
             dflops / (ms * 1e-3) / 1e12);
    }
    free_packed(&P);
  }
}

}  // namespace

int main(int argc, char** argv) { return fwd_harness_main(argc, argv, &g_only_d, sweep, bench); }
