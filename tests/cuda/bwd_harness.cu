// Standalone correctness + speed harness for the Hopper backward
// (jax_fa3::hopper::run_bwd, built with -DJAX_FA3_BWD=1).
//
//   bwd_harness                 sweep + deterministic check + bench
//   bwd_harness --quick         a few small cases (for compute-sanitizer)
//   bwd_harness --sweep | --deterministic | --bench     one part only
//   --d N                       restrict to one head dim
//
// Inputs: random q, k, v, dout (rounded to the dtype); out and lse are the
// float64 forward (out rounded to the dtype, lse as float32), so only the
// backward is tested. Rule (FA3's): max|grad - ref64| <= 2 * max|naive -
// ref64| + atol per tensor, ref64 = float64 backward on the same inputs,
// naive = same-precision backward (fp32 math, P and dS rounded to the dtype
// before the GEMMs that consume them), atol = 2 * dtype eps * max|ref64|.
// dq/dk/dv are poisoned with NaN first; an unwritten element fails.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cc/common/mask.h"
#include "cc/common/params.h"
#include "cc/hopper/api.h"

using jax_fa3::AttnParams;
using jax_fa3::DType;
using jax_fa3::MaskSpec;

#include "tests/cuda/harness_common.h"

// Dense (b, s, h, d) layout.
struct Host {
  std::vector<float> q, k, v, dout, out, lse;  // rounded values (out, inputs) / fp32 lse
  std::vector<double> dq, dk, dv;             // ref64
  std::vector<float> nq, nk, nv;              // naive
};

static void reference(const Case& c, Host& H) {
  const int d = c.d, ratio = c.h / c.hk;
  const double scale = 1.0 / std::sqrt(double(d));
  MaskSpec ms = MaskSpec::make(c.sq, c.sk, c.causal, c.wl, c.wr);
  auto qi = [&](int b, int i, int h) { return ((size_t(b) * c.sq + i) * c.h + h) * d; };
  auto ki = [&](int b, int j, int h) { return ((size_t(b) * c.sk + j) * c.hk + h) * d; };
  H.out.assign(size_t(c.b) * c.sq * c.h * d, 0.f);
  H.lse.assign(size_t(c.b) * c.h * c.sq, 0.f);
  H.dq.assign(H.out.size(), 0.0);
  H.dk.assign(size_t(c.b) * c.sk * c.hk * d, 0.0);
  H.dv.assign(H.dk.size(), 0.0);
  H.nq.assign(H.out.size(), 0.f);
  H.nk.assign(H.dk.size(), 0.f);
  H.nv.assign(H.dk.size(), 0.f);
  std::vector<double> s(c.sk), pr(c.sk), th(c.sk);
  std::vector<float> sf(c.sk), pf(c.sk), thf(c.sk);
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h) {
      int hk = h / ratio;
      // forward (double) -> out (rounded), lse (float)
      for (int i = 0; i < c.sq; ++i) {
        int64_t lo = ms.col_begin(i), hi = ms.col_end(i);
        double mx = -INFINITY;
        for (int64_t j = lo; j < hi; ++j) {
          double a = 0;
          for (int x = 0; x < d; ++x) a += double(H.q[qi(b, i, h) + x]) * H.k[ki(b, j, hk) + x];
          a *= scale;
          if (c.softcap > 0) a = c.softcap * std::tanh(a / c.softcap);
          s[j] = a;
          mx = std::max(mx, a);
        }
        double sum = 0;
        for (int64_t j = lo; j < hi; ++j) sum += std::exp(s[j] - mx);
        double lse = hi > lo ? mx + std::log(sum) : -INFINITY;
        H.lse[(size_t(b) * c.h + h) * c.sq + i] = float(lse);
        for (int x = 0; x < d; ++x) {
          double o = 0;
          for (int64_t j = lo; j < hi; ++j) o += std::exp(s[j] - lse) * H.v[ki(b, j, hk) + x];
          H.out[qi(b, i, h) + x] = round_to(c.dt, float(o));
        }
      }
      // backward: ref64 and naive
      for (int i = 0; i < c.sq; ++i) {
        int64_t lo = ms.col_begin(i), hi = ms.col_end(i);
        if (hi <= lo) continue;
        const float* q = &H.q[qi(b, i, h)];
        const float* go = &H.dout[qi(b, i, h)];
        const float* o = &H.out[qi(b, i, h)];
        double D = 0;
        float Df = 0;
        for (int x = 0; x < d; ++x) {
          D += double(go[x]) * o[x];
          Df += go[x] * o[x];
        }
        double lse = H.lse[(size_t(b) * c.h + h) * c.sq + i];
        for (int64_t j = lo; j < hi; ++j) {
          const float* k = &H.k[ki(b, j, hk)];
          const float* v = &H.v[ki(b, j, hk)];
          double a = 0, dp = 0;
          float af = 0, dpf = 0;
          for (int x = 0; x < d; ++x) {
            a += double(q[x]) * k[x];
            dp += double(go[x]) * v[x];
            af += q[x] * k[x];
            dpf += go[x] * v[x];
          }
          a *= scale;
          af *= float(scale);
          double t = 0;
          float tf = 0;
          if (c.softcap > 0) {
            t = std::tanh(a / c.softcap);
            a = c.softcap * t;
            tf = std::tanh(af / c.softcap);
            af = c.softcap * tf;
          }
          double P = std::exp(a - lse);
          float Pf = std::exp(af - float(lse));
          double dS = P * (dp - D);
          float dSf = Pf * (dpf - Df);
          if (c.softcap > 0) {
            dS *= 1 - t * t;
            dSf *= 1 - tf * tf;
          }
          float Pr = round_to(c.dt, Pf), dSr = round_to(c.dt, dSf);
          size_t kq = ki(b, j, hk), iq = qi(b, i, h);
          for (int x = 0; x < d; ++x) {
            H.dv[kq + x] += P * go[x];
            H.dk[kq + x] += scale * dS * q[x];
            H.dq[iq + x] += scale * dS * k[x];
            H.nv[kq + x] += Pr * go[x];
            H.nk[kq + x] += float(scale) * dSr * q[x];
            H.nq[iq + x] += float(scale) * dSr * k[x];
          }
        }
      }
    }
  // naive results are stored in the dtype
  for (auto* vec : {&H.nq, &H.nk, &H.nv})
    for (auto& x : *vec) x = round_to(c.dt, x);
}

struct Dev {
  void *q, *k, *v, *dout, *out, *dq, *dk, *dv, *ws;
  float* lse;
  size_t ws_bytes;
};

static AttnParams make_params(const Case& c, const Dev& D, bool deterministic) {
  AttnParams p;
  set_shape_and_mask(c, &p);
  p.softmax_scale = float(1.0 / std::sqrt(double(c.d)));
  p.q = D.q;
  p.k = D.k;
  p.v = D.v;
  p.dout = D.dout;
  p.out_in = D.out;
  p.lse_in = D.lse;
  p.dq = D.dq;
  p.dk = D.dk;
  p.dv = D.dv;
  p.deterministic = deterministic;
  return p;
}

static void* upload(DType dt, const std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) b[i] = to_bits(dt, x[i]);
  void* d = nullptr;
  CK(cudaMalloc(&d, std::max<size_t>(b.size() * 2, 16)));
  CK(cudaMemcpy(d, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
  return d;
}
static void* alloc_poison(size_t n) {
  void* d = nullptr;
  CK(cudaMalloc(&d, std::max<size_t>(n * 2, 16)));
  CK(cudaMemset(d, 0xFF, n * 2));  // 0xFFFF: NaN in bf16 and fp16
  return d;
}
static std::vector<float> download(DType dt, const void* d, size_t n) {
  std::vector<uint16_t> b(n);
  CK(cudaMemcpy(b.data(), d, n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = from_bits(dt, b[i]);
  return x;
}

static Dev setup(const Case& c, const Host& H) {
  Dev D{};
  D.q = upload(c.dt, H.q);
  D.k = upload(c.dt, H.k);
  D.v = upload(c.dt, H.v);
  D.dout = upload(c.dt, H.dout);
  D.out = upload(c.dt, H.out);
  CK(cudaMalloc(&D.lse, std::max<size_t>(H.lse.size() * 4, 16)));
  CK(cudaMemcpy(D.lse, H.lse.data(), H.lse.size() * 4, cudaMemcpyHostToDevice));
  D.dq = alloc_poison(H.q.size());
  D.dk = alloc_poison(H.k.size());
  D.dv = alloc_poison(H.k.size());
  D.ws = nullptr;
  D.ws_bytes = 0;
  return D;
}
static void teardown(Dev& D) {
  for (void* p : {D.q, D.k, D.v, D.dout, D.out, D.dq, D.dk, D.dv, D.ws, (void*)D.lse})
    if (p) cudaFree(p);
}

static std::string run(const Case& c, Dev& D, bool deterministic, bool poison = true,
                       cudaStream_t s = 0) {
  AttnParams p = make_params(c, D, deterministic);
  size_t need = jax_fa3::hopper::bwd_workspace_bytes(p);
  if (need > D.ws_bytes) {
    if (D.ws) CK(cudaFree(D.ws));
    CK(cudaMalloc(&D.ws, need));
    D.ws_bytes = need;
  }
  // Poison the workspace: the kernel must not rely on it being zero.
  if (poison && D.ws_bytes) CK(cudaMemsetAsync(D.ws, 0x7F, D.ws_bytes, s));
  p.workspace = D.ws;
  p.workspace_bytes = int64_t(D.ws_bytes);
  return jax_fa3::hopper::run_bwd(p, s);
}

static bool check_tensor(const char* name, const std::vector<float>& got,
                         const std::vector<double>& ref, const std::vector<float>& naive,
                         DType dt, std::string* msg) {
  double err = 0, nerr = 0, mx = 0;
  bool finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) finite = false;
    err = std::max(err, std::fabs(got[i] - ref[i]));
    nerr = std::max(nerr, std::fabs(naive[i] - ref[i]));
    mx = std::max(mx, std::fabs(ref[i]));
  }
  double eps = dt == DType::kBF16 ? 1.0 / 256 : 1.0 / 2048;
  // atol: fp32 rounding of dP - dPsum, which cancel exactly when a row sees
  // one key (seen up to 2.7e-6 at d=256 with unit-normal inputs).
  double tol = 2 * nerr + 2 * eps * mx + 2e-5;
  char buf[200];
  snprintf(buf, sizeof buf, " %s err=%.3g naive=%.3g tol=%.3g%s", name, err, nerr, tol,
           finite ? "" : " NONFINITE");
  *msg += buf;
  return finite && err <= tol;
}

// Random q, k, v, dout (unit normal, rounded to the dtype).
static Host random_inputs(const Case& c, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  Host H;
  auto fill = [&](std::vector<float>& x, size_t n) {
    x.resize(n);
    for (auto& e : x) e = round_to(c.dt, nd(rng));
  };
  fill(H.q, size_t(c.b) * c.sq * c.h * c.d);
  fill(H.k, size_t(c.b) * c.sk * c.hk * c.d);
  fill(H.v, H.k.size());
  fill(H.dout, H.q.size());
  return H;
}

static bool run_case(const Case& c, unsigned seed) {
  Host H = random_inputs(c, seed);
  reference(c, H);
  Dev D = setup(c, H);
  std::string e = run(c, D, false);
  CK(cudaDeviceSynchronize());
  bool ok = e.empty();
  std::string msg;
  if (ok) {
    ok &= check_tensor("dq", download(c.dt, D.dq, H.q.size()), H.dq, H.nq, c.dt, &msg);
    ok &= check_tensor("dk", download(c.dt, D.dk, H.k.size()), H.dk, H.nk, c.dt, &msg);
    ok &= check_tensor("dv", download(c.dt, D.dv, H.k.size()), H.dv, H.nv, c.dt, &msg);
  } else {
    msg = " run_bwd: " + e;
  }
  printf("%s %s%s\n", ok ? "PASS" : "FAIL", describe(c).c_str(), msg.c_str());
  fflush(stdout);
  teardown(D);
  return ok;
}

// Runs 20 times with deterministic = true; all results must be bitwise equal.
static bool run_det(const Case& c) {
  Host H = random_inputs(c, 7);
  H.out = H.dout;  // any values: only reproducibility is checked
  H.lse.assign(size_t(c.b) * c.h * c.sq, float(std::log(double(c.sk))));
  Dev D = setup(c, H);
  std::vector<uint16_t> first[3], cur[3];
  bool ok = true;
  for (int it = 0; it < 20 && ok; ++it) {
    std::string e = run(c, D, true);
    CK(cudaDeviceSynchronize());
    if (!e.empty()) {
      printf("FAIL det %s run_bwd: %s\n", describe(c).c_str(), e.c_str());
      ok = false;
      break;
    }
    void* ptr[3] = {D.dq, D.dk, D.dv};
    size_t n[3] = {H.q.size(), H.k.size(), H.k.size()};
    for (int t = 0; t < 3; ++t) {
      cur[t].resize(n[t]);
      CK(cudaMemcpy(cur[t].data(), ptr[t], n[t] * 2, cudaMemcpyDeviceToHost));
      if (it == 0) first[t] = cur[t];
      else if (cur[t] != first[t]) ok = false;
    }
  }
  printf("%s det(20 runs bitwise) %s\n", ok ? "PASS" : "FAIL", describe(c).c_str());
  fflush(stdout);
  teardown(D);
  return ok;
}

static void bench(int only_d) {
  printf("bench (bf16, TF/s = 2.5 * 4*b*h*s*s*d / t, halved for causal; median of 10)\n");
  for (int d : {64, 96, 128, 192, 256}) {
    if (only_d && d != only_d) continue;
    for (int s : {2048, 8192, 16384}) {
      for (bool causal : {false, true}) {
        Case c{d, DType::kBF16, 16384 / s, s, s, 2048 / d, 2048 / d, causal, -1, -1, 0.f};
        size_t nq = size_t(c.b) * s * c.h * d;
        Host H;
        H.q.assign(nq, 0.1f);
        H.k = H.q;
        H.v = H.q;
        H.dout = H.q;
        H.out = H.q;
        H.lse.assign(size_t(c.b) * c.h * s, 10.f);
        Dev D = setup(c, H);
        for (bool det : {false, true}) {
          std::string e = run(c, D, det);
          if (!e.empty()) {
            printf("d=%d s=%d: %s\n", d, s, e.c_str());
            break;
          }
          cudaEvent_t a, b;
          CK(cudaEventCreate(&a));
          CK(cudaEventCreate(&b));
          std::vector<float> ms;
          for (int it = 0; it < 13; ++it) {
            CK(cudaEventRecord(a));
            run(c, D, det, /*poison=*/false);
            CK(cudaEventRecord(b));
            CK(cudaEventSynchronize(b));
            float t;
            CK(cudaEventElapsedTime(&t, a, b));
            if (it >= 3) ms.push_back(t);
          }
          std::sort(ms.begin(), ms.end());
          double t = ms[ms.size() / 2] * 1e-3;
          double flops = 2.5 * 4.0 * c.b * c.h * double(s) * s * d * (causal ? 0.5 : 1.0);
          printf("d=%3d s=%5d %-10s %-6s %7.3f ms %7.1f TF/s\n", d, s,
                 causal ? "causal" : "noncausal", det ? "det" : "", t * 1e3, flops / t * 1e-12);
          fflush(stdout);
          cudaEventDestroy(a);
          cudaEventDestroy(b);
        }
        teardown(D);
      }
    }
  }
}

int main(int argc, char** argv) {
  bool quick = false, sweep = false, det = false, do_bench = false;
  int only_d = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--sweep") sweep = true;
    else if (a == "--deterministic") det = true;
    else if (a == "--bench") do_bench = true;
    else if (a == "--d" && i + 1 < argc) only_d = atoi(argv[++i]);
  }
  if (!quick && !sweep && !det && !do_bench) sweep = det = do_bench = true;
  std::string dev = jax_fa3::hopper::check_device();
  if (!dev.empty()) {
    printf("%s\n", dev.c_str());
    return 1;
  }
  int fails = 0, total = 0;
  std::vector<int> dims = {64, 96, 128, 192, 256};
  if (only_d) dims = {only_d};
  if (quick) {
    for (int d : dims) {
      for (Case c : {Case{d, DType::kBF16, 1, 77, 130, 2, 2, false, -1, -1, 0.f},
                     Case{d, DType::kBF16, 1, 130, 77, 4, 2, true, -1, -1, 0.f}}) {
        ++total;
        fails += !run_case(c, 1234 + total);
      }
    }
  }
  if (sweep) {
    struct M { bool causal; int wl, wr; };
    const M masks[] = {{false, -1, -1}, {true, -1, -1}, {false, 64, 32}, {true, 64, -1}};
    const int shapes[][2] = {{1, 1}, {17, 113}, {113, 17}, {200, 333}, {333, 200}, {257, 257}};
    for (int d : dims) {
      for (const M& m : masks)
        for (float cap : {0.f, 30.f})
          for (int ratio : {1, 4})
            for (auto& sh : shapes) {
              Case c{d, DType::kBF16, 2, sh[0], sh[1], 4, 4 / ratio, m.causal, m.wl, m.wr, cap};
              ++total;
              fails += !run_case(c, 1000 + total);
            }
      for (Case c : {Case{d, DType::kF16, 1, 1000, 1000, 2, 2, false, -1, -1, 0.f},
                     Case{d, DType::kF16, 1, 1000, 999, 4, 1, true, -1, -1, 0.f},
                     Case{d, DType::kBF16, 1, 1000, 1000, 2, 1, true, -1, -1, 30.f},
                     Case{d, DType::kBF16, 1, 0, 100, 2, 2, false, -1, -1, 0.f},
                     Case{d, DType::kBF16, 1, 100, 0, 2, 1, false, -1, -1, 0.f}}) {
        ++total;
        fails += !run_case(c, 5000 + total);
      }
    }
  }
  if (det) {
    for (int d : dims) {
      for (Case c : {Case{d, DType::kBF16, 2, 1000, 1000, 4, 4, false, -1, -1, 0.f},
                     Case{d, DType::kBF16, 2, 1000, 777, 8, 2, true, -1, -1, 0.f},
                     Case{d, DType::kF16, 1, 513, 1000, 4, 1, false, 100, 50, 30.f}}) {
        ++total;
        fails += !run_det(c);
      }
    }
  }
  if (sweep || det || quick) printf("%d/%d passed\n", total - fails, total);
  if (do_bench) bench(only_d);
  return fails ? 1 : 0;
}
