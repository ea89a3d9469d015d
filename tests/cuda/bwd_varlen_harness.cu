// Varlen (packed sequences) mode of the backward harness:
//
//   bwd_harness --varlen                 sweep + deterministic check + bench
//   bwd_harness --varlen --quick         a few small cases (for compute-sanitizer)
//   bwd_harness --varlen --sweep | --deterministic | --bench
//   --d N                                restrict sweep/quick/det to one head dim
//
// Each case packs documents one after the other (cc/common/varlen.h
// conventions): empty ones, length 1, lengths that are no multiple of the
// tiles, q and k lengths that differ, seqused below the allocation, rows after
// cu_seqlens[-1]. Every row of q, k, v, dout and out holds random finite data,
// the unattended ones included (the kernels may read them as padding; the
// results must not depend on them); unattended lse entries are NaN (nothing
// may read them). The reference is bwd_common.h's float64 backward of each
// sequence alone on its attended rows (O and LSE from the float64 forward,
// O rounded to the dtype), so only the backward is tested; FA3's rule per
// packed tensor; dq/dk/dv are poisoned with NaN first and their unattended
// rows must come back exactly 0.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cc/common/mask.h"
#include "cc/common/params.h"
#include "cc/common/varlen.h"
#include "cc/hopper/api.h"
#include "tests/cuda/bwd_common.h"
#include "tests/cuda/harness_common.h"

namespace {

struct VCase {
  int d;
  DType dt;
  int h, hk;
  bool causal;
  int wl, wr;
  float softcap;
  std::vector<int> alloc_q, alloc_k;  // rows cu_seqlens gives each sequence
  std::vector<int> used_q, used_k;    // attended rows (seqused); empty: all
  int tail_q = 0, tail_k = 0;         // rows after the last sequence
  int slack = 0;                      // max_seqlen above the longest sequence
};

int len_of(const std::vector<int>& alloc, const std::vector<int>& used, size_t b) {
  return used.empty() ? alloc[b] : used[b];
}

std::string describe(const VCase& c) {
  char buf[200];
  snprintf(buf, sizeof buf, "d=%d %s h=%d hk=%d causal=%d win=(%d,%d) cap=%g seqs=%zu used=%d%d",
           c.d, c.dt == DType::kBF16 ? "bf16" : "fp16", c.h, c.hk, c.causal, c.wl, c.wr,
           c.softcap, c.alloc_q.size(), !c.used_q.empty(), !c.used_k.empty());
  std::string s = buf;
  s += " len(q,k)=";
  for (size_t b = 0; b < c.alloc_q.size(); ++b)
    s += std::to_string(len_of(c.alloc_q, c.used_q, b)) + "," +
         std::to_string(len_of(c.alloc_k, c.used_k, b)) + " ";
  return s;
}

// Host side of one case: packed inputs, ref64 / naive gradients, offsets.
struct Packed {
  std::vector<int32_t> cu_q, cu_k, used_q, used_k;
  int64_t total_q = 0, total_k = 0, max_q = 0, max_k = 0;
  std::vector<float> q, k, v, dout, out, lse;
  std::vector<double> dq, dk, dv;
  std::vector<float> nq, nk, nv;
  std::vector<char> att_q, att_k;  // row attended by its sequence
};

void offsets(const std::vector<int>& alloc, const std::vector<int>& used, int tail,
             std::vector<int32_t>* cu, std::vector<int32_t>* u, int64_t* total, int64_t* mx) {
  cu->assign(1, 0);
  *mx = 0;
  for (size_t b = 0; b < alloc.size(); ++b) {
    cu->push_back(cu->back() + alloc[b]);
    *mx = std::max<int64_t>(*mx, len_of(alloc, used, b));
  }
  u->assign(used.begin(), used.end());
  *total = cu->back() + tail;
}

// Rows [r0, r0 + n) of a (rows, heads * d) tensor.
template <class T>
std::vector<T> rows(const std::vector<T>& x, int64_t r0, int64_t n, int64_t width) {
  return std::vector<T>(x.begin() + r0 * width, x.begin() + (r0 + n) * width);
}
template <class T>
void put_rows(std::vector<T>* x, const std::vector<T>& src, int64_t r0, int64_t width) {
  std::copy(src.begin(), src.end(), x->begin() + r0 * width);
}

Packed build(const VCase& c, unsigned seed, bool with_reference) {
  Packed P;
  offsets(c.alloc_q, c.used_q, c.tail_q, &P.cu_q, &P.used_q, &P.total_q, &P.max_q);
  offsets(c.alloc_k, c.used_k, c.tail_k, &P.cu_k, &P.used_k, &P.total_k, &P.max_k);
  P.max_q += c.slack;
  P.max_k += c.slack;
  const int64_t wq = int64_t(c.h) * c.d, wk = int64_t(c.hk) * c.d;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto fill = [&](std::vector<float>& x, size_t n) {
    x.resize(n);
    for (auto& e : x) e = round_to(c.dt, nd(rng));
  };
  fill(P.q, P.total_q * wq);
  fill(P.dout, P.q.size());
  fill(P.out, P.q.size());  // attended rows overwritten by the forward below
  fill(P.k, P.total_k * wk);
  fill(P.v, P.k.size());
  P.lse.assign(size_t(c.h) * P.total_q, NAN);
  P.dq.assign(P.q.size(), 0.0);
  P.nq.assign(P.q.size(), 0.f);
  P.dk.assign(P.k.size(), 0.0);
  P.dv.assign(P.k.size(), 0.0);
  P.nk.assign(P.k.size(), 0.f);
  P.nv.assign(P.k.size(), 0.f);
  P.att_q.assign(P.total_q, 0);
  P.att_k.assign(P.total_k, 0);
  for (size_t b = 0; b < c.alloc_q.size(); ++b) {
    jax_fa3::SeqBounds sb =
        jax_fa3::seq_bounds(P.cu_q.data(), P.cu_k.data(), P.used_q.empty() ? nullptr : P.used_q.data(),
                            P.used_k.empty() ? nullptr : P.used_k.data(), int64_t(b));
    std::fill(P.att_q.begin() + sb.q_start, P.att_q.begin() + sb.q_start + sb.len_q, 1);
    std::fill(P.att_k.begin() + sb.k_start, P.att_k.begin() + sb.k_start + sb.len_k, 1);
    if (!with_reference) {
      // Timing only: any finite out and lse.
      for (int h = 0; h < c.h; ++h)
        for (int64_t i = 0; i < sb.len_q; ++i) P.lse[h * P.total_q + sb.q_start + i] = 10.f;
      continue;
    }
    Case cs{c.d, c.dt, 1, int(sb.len_q), int(sb.len_k), c.h, c.hk, c.causal, c.wl, c.wr,
            c.softcap};
    Host H;
    H.q = rows(P.q, sb.q_start, sb.len_q, wq);
    H.dout = rows(P.dout, sb.q_start, sb.len_q, wq);
    H.k = rows(P.k, sb.k_start, sb.len_k, wk);
    H.v = rows(P.v, sb.k_start, sb.len_k, wk);
    reference(cs, H);
    put_rows(&P.out, H.out, sb.q_start, wq);
    put_rows(&P.dq, H.dq, sb.q_start, wq);
    put_rows(&P.nq, H.nq, sb.q_start, wq);
    put_rows(&P.dk, H.dk, sb.k_start, wk);
    put_rows(&P.dv, H.dv, sb.k_start, wk);
    put_rows(&P.nk, H.nk, sb.k_start, wk);
    put_rows(&P.nv, H.nv, sb.k_start, wk);
    for (int h = 0; h < c.h; ++h)
      for (int64_t i = 0; i < sb.len_q; ++i)
        P.lse[h * P.total_q + sb.q_start + i] = H.lse[h * sb.len_q + i];
  }
  return P;
}

// Device buffers plus the offsets (used_* null when the case has none).
struct VDev : Dev {
  int32_t *cu_q, *cu_k, *used_q, *used_k;
};

int32_t* upload_i32(const std::vector<int32_t>& x) {
  if (x.empty()) return nullptr;
  int32_t* d = nullptr;
  CK(cudaMalloc(&d, x.size() * 4));
  CK(cudaMemcpy(d, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  return d;
}

VDev setup(const VCase& c, const Packed& P) {
  VDev D;
  static_cast<Dev&>(D) = upload_all(c.dt, P.q, P.k, P.v, P.dout, P.out, P.lse);
  D.cu_q = upload_i32(P.cu_q);
  D.cu_k = upload_i32(P.cu_k);
  D.used_q = upload_i32(P.used_q);
  D.used_k = upload_i32(P.used_k);
  return D;
}

void teardown(VDev& D) {
  free_all(D);
  for (int32_t* p : {D.cu_q, D.cu_k, D.used_q, D.used_k})
    if (p) cudaFree(p);
}

AttnParams make_params(const VCase& c, const Packed& P, const VDev& D, bool det) {
  AttnParams p;
  Case shape{c.d, c.dt, int(c.alloc_q.size()), int(P.max_q), int(P.max_k), c.h, c.hk,
             c.causal, c.wl, c.wr, c.softcap};
  set_varlen_shape_and_mask(shape, P.total_q, P.total_k, D.cu_q, D.cu_k, D.used_q, D.used_k,
                            &p);
  set_bwd_buffers(D, det, &p);
  return p;
}

// Unattended rows (width elements each) must be exactly 0.
bool check_unattended(const char* name, const std::vector<float>& got,
                      const std::vector<char>& att, int64_t width, std::string* msg) {
  int64_t bad = 0;
  for (size_t r = 0; r < att.size(); ++r)
    if (!att[r])
      for (int64_t x = 0; x < width; ++x) bad += got[r * width + x] != 0.f;
  if (bad) *msg += std::string(" ") + name + ": " + std::to_string(bad) + " unattended != 0";
  return bad == 0;
}

bool run_case(const VCase& c, unsigned seed) {
  Packed P = build(c, seed, true);
  VDev D = setup(c, P);
  // BWD_SWEEP_DET=1: values in deterministic mode (bwd_harness.cu says why).
  static bool const det = getenv("BWD_SWEEP_DET") && getenv("BWD_SWEEP_DET")[0] == '1';
  std::string e = run_on(make_params(c, P, D, det), D, true, 0);
  CK(cudaDeviceSynchronize());
  bool ok = e.empty();
  std::string msg;
  if (ok) {
    const int64_t wq = int64_t(c.h) * c.d, wk = int64_t(c.hk) * c.d;
    std::vector<float> dq = download(c.dt, D.dq, P.q.size());
    std::vector<float> dk = download(c.dt, D.dk, P.k.size());
    std::vector<float> dv = download(c.dt, D.dv, P.k.size());
    ok &= check_tensor("dq", dq, P.dq, P.nq, c.dt, &msg);
    ok &= check_tensor("dk", dk, P.dk, P.nk, c.dt, &msg);
    ok &= check_tensor("dv", dv, P.dv, P.nv, c.dt, &msg);
    ok &= check_unattended("dq", dq, P.att_q, wq, &msg);
    ok &= check_unattended("dk", dk, P.att_k, wk, &msg);
    ok &= check_unattended("dv", dv, P.att_k, wk, &msg);
  } else {
    msg = " run_bwd: " + e;
  }
  teardown(D);
  return report(ok, describe(c), msg);
}

// Runs 5 times with deterministic = true; all results must be bitwise equal.
bool run_det(const VCase& c) {
  Packed P = build(c, 7, false);
  VDev D = setup(c, P);
  AttnParams p = make_params(c, P, D, true);
  std::string msg;
  bool ok = same_bits(p, D, P.q.size(), P.k.size(), 5, &msg);
  teardown(D);
  return report(ok, "det(5 runs bitwise) " + describe(c), msg);
}

// Random documents: n sequences, allocations in [0, max_len], seqused (when
// asked) in [0, alloc], up to 70 trailing rows.
VCase random_docs(VCase c, std::mt19937& rng, int n, int max_len, bool used) {
  std::uniform_int_distribution<int> len(0, max_len), tail(0, 70);
  c.alloc_q.clear();
  c.alloc_k.clear();
  c.used_q.clear();
  c.used_k.clear();
  for (int b = 0; b < n; ++b) {
    c.alloc_q.push_back(len(rng));
    c.alloc_k.push_back(rng() % 3 == 0 ? len(rng) : c.alloc_q.back());  // mostly self-attention
    if (used) {
      c.used_q.push_back(std::uniform_int_distribution<int>(0, c.alloc_q.back())(rng));
      c.used_k.push_back(std::uniform_int_distribution<int>(0, c.alloc_k.back())(rng));
    }
  }
  c.tail_q = tail(rng);
  c.tail_k = tail(rng);
  return c;
}

// Fixed layouts: empty sequences on either side, length 1, tile multiples
// and not, seqused below the allocation, trailing rows, q != k lengths.
VCase docs_mixed(VCase c) {
  c.alloc_q = {0, 1, 17, 64, 130, 1, 0, 257, 200};
  c.alloc_k = {0, 1, 17, 64, 130, 1, 9, 257, 200};
  c.used_q = {0, 1, 15, 64, 100, 1, 0, 257, 190};
  c.used_k = {0, 1, 17, 60, 129, 0, 9, 257, 128};
  c.tail_q = 5;
  c.tail_k = 3;
  return c;
}
VCase docs_cross(VCase c) {
  c.alloc_q = {100, 0, 33, 64, 1, 300, 7};
  c.alloc_k = {57, 40, 0, 129, 300, 1, 7};
  c.tail_k = 7;
  c.slack = 50;
  return c;
}

void bench() {
  // 16k tokens of documents with lengths uniform in [128, 4096], the last
  // one cut to fit; d128, 16 heads, bf16; against the dense backward at
  // batch 8 x 2048 in the same run. TF/s = 2.5 * 4 * h * d * visible pairs.
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int> len(128, 4096);
  VCase v{128, DType::kBF16, 16, 16, false, -1, -1, 0.f};
  for (int tot = 0; tot < 16384;) {
    int l = std::min(len(rng), 16384 - tot);
    v.alloc_q.push_back(l);
    tot += l;
  }
  v.alloc_k = v.alloc_q;
  printf("bench varlen d128 h16 bf16, %zu docs:", v.alloc_q.size());
  for (int l : v.alloc_q) printf(" %d", l);
  printf("\n");
  VCase dense = v;
  dense.alloc_q.assign(8, 2048);
  dense.alloc_k = dense.alloc_q;
  for (bool causal : {false, true}) {
    double tfs[2] = {0, 0};
    for (int which = 0; which < 2; ++which) {
      VCase c = which == 0 ? v : dense;
      c.causal = causal;
      Packed P = build(c, 1, false);
      P.q.assign(P.q.size(), 0.1f);  // bench data as the dense harness's
      P.k.assign(P.k.size(), 0.1f);
      P.v = P.k;
      P.dout = P.q;
      P.out = P.q;
      VDev D = setup(c, P);
      AttnParams p = make_params(c, P, D, false);
      if (which == 1) {
        // The same tensors read as dense (batch 8, 2048, heads, d).
        p.is_varlen = false;
        p.q_batch_stride = 2048 * p.q_row_stride;
        p.k_batch_stride = 2048 * p.k_row_stride;
        p.lse_head_stride = 2048;
        p.lse_batch_stride = 2048 * int64_t(c.h);
      }
      double pairs = 0;
      for (size_t b = 0; b < c.alloc_q.size(); ++b) {
        MaskSpec ms = MaskSpec::make(c.alloc_q[b], c.alloc_k[b], causal, -1, -1);
        for (int i = 0; i < c.alloc_q[b]; ++i) pairs += double(ms.col_end(i) - ms.col_begin(i));
      }
      std::string e = run_on(p, D, false, 0);
      if (!e.empty()) {
        printf("bench: %s\n", e.c_str());
        teardown(D);
        return;
      }
      double t = median_ms([&] { run_on(p, D, false, 0); }) * 1e-3;
      tfs[which] = 2.5 * 4.0 * c.h * c.d * pairs / t * 1e-12;
      printf("%-6s %-9s %7.3f ms %7.1f TF/s\n", which == 0 ? "varlen" : "dense",
             causal ? "causal" : "noncausal", t * 1e3, tfs[which]);
      fflush(stdout);
      teardown(D);
    }
    printf("varlen / dense (%s): %.3f\n", causal ? "causal" : "noncausal", tfs[0] / tfs[1]);
  }
}

}  // namespace

int varlen_main(int argc, char** argv) {
  Args args;
  if (!parse_args(argc, argv, &args)) return 1;
  bool const quick = args.quick, sweep = args.sweep, det = args.det, do_bench = args.bench;
  std::vector<int> const dims = args.dims();
  int fails = 0, total = 0;
  auto one = [&](const VCase& c) {
    ++total;
    fails += !run_case(c, 100 + total);
  };
  std::mt19937 rng(12345);
  if (quick) {
    for (int d : dims) {
      one(docs_mixed(VCase{d, DType::kBF16, 2, 1, true, -1, -1, 0.f}));
      one(docs_cross(VCase{d, DType::kBF16, 2, 2, false, 20, 5, 0.f}));
    }
  }
  if (sweep) {
    struct M { bool causal; int wl, wr; };
    const M masks[] = {{false, -1, -1}, {true, -1, -1}, {false, 64, 32}, {true, 64, -1}};
    for (int d : dims) {
      for (const M& m : masks)
        for (float cap : {0.f, 30.f})
          for (int ratio : {1, 4}) {
            VCase c{d, DType::kBF16, 4, 4 / ratio, m.causal, m.wl, m.wr, cap};
            one(ratio == 1 ? docs_mixed(c) : docs_cross(c));
            one(random_docs(c, rng, 6, 300, cap == 0.f));
          }
      VCase f16{d, DType::kF16, 4, 2, true, -1, -1, 0.f};
      one(docs_mixed(f16));
      one(random_docs(f16, rng, 3, 1000, false));
      // Edge layouts: no query rows at all (main kernel skipped, dk = dv =
      // 0), no key rows, every sequence's seqused 0, and one sequence.
      VCase e{d, DType::kBF16, 4, 2, false, -1, -1, 0.f};
      e.alloc_q = {0, 0};
      e.alloc_k = {5, 70};
      e.tail_q = 3;
      one(e);
      e.alloc_q = {10, 20};
      e.alloc_k = {0, 0};
      e.tail_q = 0;
      one(e);
      e.alloc_k = {10, 30};
      e.used_q = {0, 0};
      e.used_k = {0, 0};
      one(e);
      e = VCase{d, DType::kBF16, 2, 2, true, -1, -1, 0.f};
      e.alloc_q = {1000};
      e.alloc_k = {999};
      one(e);
    }
  }
  if (det) {
    for (int d : dims) {
      for (VCase c : {VCase{d, DType::kBF16, 4, 1, true, -1, -1, 0.f},
                      VCase{d, DType::kBF16, 4, 4, false, -1, -1, 0.f},
                      VCase{d, DType::kF16, 8, 2, false, 100, 50, 30.f}}) {
        ++total;
        fails += !run_det(random_docs(c, rng, 5, 1200, true));
      }
    }
  }
  if (sweep || det || quick) printf("%d/%d passed\n", total - fails, total);
  if (do_bench) bench();
  return fails ? 1 : 0;
}
