// Standalone correctness + speed harness for the Hopper backward
// (jax_fa3::hopper::run_bwd, built with -DJAX_FA3_BWD=1).
//
//   bwd_harness                 sweep + deterministic check + bench
//   bwd_harness --quick         a few small cases (for compute-sanitizer)
//   bwd_harness --sweep | --deterministic | --bench     one part only
//   --d N                       restrict to one head dim
//   bwd_harness --varlen ...    packed sequences (bwd_varlen_harness.cu)
//   BWD_SWEEP_DET=1 bwd_harness --sweep   the sweep in deterministic mode
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
#include <cstdlib>
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
#include "tests/cuda/bwd_common.h"

static Dev setup(const Case& c, const Host& H) {
  return upload_all(c.dt, H.q, H.k, H.v, H.dout, H.out, H.lse);
}
static void teardown(Dev& D) { free_all(D); }

static std::string run(const Case& c, Dev& D, bool deterministic, bool poison = true,
                       cudaStream_t s = 0) {
  AttnParams p;
  set_shape_and_mask(c, &p);
  set_bwd_buffers(D, deterministic, &p);
  return run_on(p, D, poison, s);
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
  // BWD_SWEEP_DET=1: the sweep's values in deterministic mode (its own grid
  // order and semaphores), where --deterministic checks reproducibility only.
  static bool const det = getenv("BWD_SWEEP_DET") && getenv("BWD_SWEEP_DET")[0] == '1';
  std::string e = run(c, D, det);
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
  teardown(D);
  return report(ok, describe(c), msg);
}

// Runs 20 times with deterministic = true; all results must be bitwise equal.
static bool run_det(const Case& c) {
  Host H = random_inputs(c, 7);
  H.out = H.dout;  // any values: only reproducibility is checked
  H.lse.assign(size_t(c.b) * c.h * c.sq, float(std::log(double(c.sk))));
  Dev D = setup(c, H);
  AttnParams p;
  set_shape_and_mask(c, &p);
  set_bwd_buffers(D, true, &p);
  std::string msg;
  bool ok = same_bits(p, D, H.q.size(), H.k.size(), 20, &msg);
  teardown(D);
  return report(ok, "det(20 runs bitwise) " + describe(c), msg);
}

static void bench(int only_d) {
  printf("bench (bf16, TF/s = 2.5 * 4*b*h*s*s*d / t, halved for causal; median of 10)\n");
  for (int d : {64, 96, 128, 192, 256}) {
    if (only_d && d != only_d) continue;
    for (int s : {2048, 8192, 16384}) {
      // BWD_BENCH_S=N times seqlen N only (one case to profile with ncu).
      if (getenv("BWD_BENCH_S") && atoi(getenv("BWD_BENCH_S")) != s) continue;
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
          // BWD_BENCH_MODES=det / default: that mode only (A/B of one mode).
          if (char const* m = getenv("BWD_BENCH_MODES")) {
            if (std::string(m) != (det ? "det" : "default")) continue;
          }
          std::string e = run(c, D, det);
          if (!e.empty()) {
            printf("d=%d s=%d: %s\n", d, s, e.c_str());
            break;
          }
          double t = median_ms([&] { run(c, D, det, /*poison=*/false); }) * 1e-3;
          double flops = 2.5 * 4.0 * c.b * c.h * double(s) * s * d * (causal ? 0.5 : 1.0);
          printf("d=%3d s=%5d %-10s %-6s %7.3f ms %7.1f TF/s\n", d, s,
                 causal ? "causal" : "noncausal", det ? "det" : "", t * 1e3, flops / t * 1e-12);
          fflush(stdout);
        }
        teardown(D);
      }
    }
  }
}

// bwd_varlen_harness.cu
int varlen_main(int argc, char** argv);

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--varlen") return varlen_main(argc - 1, argv + 1);
  Args args;
  if (!parse_args(argc, argv, &args)) return 1;
  bool const quick = args.quick, sweep = args.sweep, det = args.det, do_bench = args.bench;
  std::vector<int> const dims = args.dims();
  int fails = 0, total = 0;
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
  if (do_bench) bench(args.only_d);
  return fails ? 1 : 0;
}
