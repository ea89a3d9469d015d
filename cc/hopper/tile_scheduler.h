// Static persistent tile scheduler: the grid has one CTA per SM and CTA i
// processes tiles i, i + gridDim.x, ... Producer and consumers of a CTA walk
// the same sequence independently, so they need no communication about it.
//
// Order: head-major (all m-blocks of one (batch, head) are consecutive) so the
// ~132 CTAs running at once share a few heads' K/V in L2 instead of each
// streaming a different head's K/V from HBM.
//
// Balance: for causal / local, CTAs take tiles in pairs (2u, 2u+1), unit u
// going to CTA u % gridDim.x. For causal / windowed attention the m-blocks of a head are
// ordered zig-zag (last, first, last-1, second, ...) so a pair's work is
// nearly constant (heavy + light). A plain round robin over m-blocks is badly
// unbalanced when the number of m-blocks is close to the number of SMs
// (measured: seqlen 16k, d128 causal ran at 65% of the non-causal rate).
//
// Varlen (packed sequences) has its own walk, VarlenTileWalker below.
#pragma once

#include <cstdint>

#include "cc/common/varlen.h"

namespace jax_fa3::hopper {

struct TileCoord {
  int m_block;
  int head;
  int batch;
};

struct StaticTileScheduler {
  int num_m_blocks;
  int num_heads;
  int total_tiles;
  bool zigzag_m;  // causal / local: pair heavy and light m-blocks

  // Pairs only where tiles differ in cost (zigzag_m); equal tiles go round
  // robin one at a time, which keeps the CTAs running at once on fewer heads
  // (better K/V reuse in L2).
  __device__ __forceinline__ int first_tile() const {
    return zigzag_m ? 2 * int(blockIdx.x) : int(blockIdx.x);
  }
  __device__ __forceinline__ int next_tile(int t) const {
    if (!zigzag_m) return t + int(gridDim.x);
    return (t & 1) ? t - 1 + 2 * int(gridDim.x) : t + 1;
  }
  // Grid size for `sms` multiprocessors: no CTA without work.
  static int grid_size(int total_tiles, int sms, bool zigzag_m) {
    int units = zigzag_m ? (total_tiles + 1) / 2 : total_tiles;
    return units < sms ? units : sms;
  }

  __device__ __forceinline__ TileCoord get(int tile) const {
    int bh = tile / num_m_blocks;
    int j = tile - bh * num_m_blocks;
    int m = j;
    if (zigzag_m) m = (j & 1) ? (j >> 1) : num_m_blocks - 1 - (j >> 1);
    TileCoord c;
    c.m_block = m;
    c.batch = bh / num_heads;
    c.head = bh - c.batch * num_heads;
    return c;
  }
};

// ---- varlen -----------------------------------------------------------------
//
// Tiles are (sequence b, head, m-block) with m_block * kBlockM < len_q(b):
// only tiles with query rows exist (the grid is sized for the upper bound
// num_seqs * heads * ceil(max_seqlen_q / kBlockM), but the walk never visits
// an empty one). Producer and consumers run the same walk, so they make the
// same decisions without talking to each other.
//
// The walk visits a list of units: sequence by sequence, head-major inside a
// sequence (the CTAs running at once share a few heads' K/V in L2, as in the
// dense order), one unit per m-block, or with causal / local a (heavy,
// light) pair of m-blocks (m, nm-1-m) of equal total cost, as the dense
// zig-zag. CTA c takes unit c + r * G in round r (G = gridDim.x), mirrored
// (G-1-c) in odd rounds ("snake"), and, for up to 32 sequences, the
// sequences are visited by decreasing cost (1 + key blocks), longest first:
// the rounds then hold units of about equal cost and the last ones are the
// cheapest, a static approximation of longest-processing-time-first.
// Simulated on 16k tokens of documents with lengths uniform in [128, 4096]
// (d128, 16 heads, 132 CTAs; makespan / mean over 30 draws): non-causal
// 1.05 -> 1.02, causal 1.12 -> 1.07 against plain round robin in sequence
// order (JAX_FA3_VARLEN_PLAIN_RR=1), and 1.18 / 1.30 for round robin over
// ceil(max_seqlen_q / kBlockM) m-blocks per head with the empty ones
// skipped.

// Bounds of one sequence in the packed tensors, clamped so that offsets that
// break params.h's contract cannot make the kernel read or write outside
// the packed tensors or its int32 range (valid offsets are left unchanged).
struct VarlenSeq {
  int q_start, k_start, len_q, len_k;
};

struct VarlenScheduler {
  const int32_t* cu_q;
  const int32_t* cu_k;
  const int32_t* used_q;  // or null
  const int32_t* used_k;  // or null
  int num_seqs, num_heads;
  int max_seqlen_q, max_seqlen_k, total_q, total_k;
  bool pairs;   // causal / local: units are (heavy, light) m-block pairs
  bool sorted;  // visit sequences by decreasing cost (needs num_seqs <= 32)
  bool snake;   // mirror the CTA order in odd rounds

  __device__ __forceinline__ VarlenSeq seq(int b) const {
    // The clamp every varlen kernel and the fill share (varlen.h).
    VarlenSide const vq{cu_q, used_q, total_q, max_seqlen_q};
    VarlenSide const vk{cu_k, used_k, total_k, max_seqlen_k};
    VarlenSeq r;
    r.q_start = int(vq.start(b));
    r.k_start = int(vk.start(b));
    r.len_q = int(vq.len(b));
    r.len_k = int(vk.len(b));
    return r;
  }

  // Units per head of a sequence with nm m-blocks.
  __device__ __forceinline__ int units_per_head(int nm) const { return pairs ? (nm + 1) / 2 : nm; }

  // Grid for an upper bound on the number of units: no CTA without work
  // when the bound is below the SM count.
  static int grid_size(int64_t units_bound, int sms) {
    return int(units_bound < sms ? units_bound : sms);
  }
};

// One warp's walk over its CTA's tiles. Every lane of the warp must call
// next() (warp-wide shuffles); all lanes get the same tiles. Lane l caches
// sequence b0 + l of the current chunk of 32.
template <int kBlockM, int kBlockN>
struct VarlenTileWalker {
  VarlenScheduler const& s;
  int lane_key;  // 0: no tiles (len_q == 0, or past num_seqs); else 1 + key blocks
  int lane_nm;   // m-blocks
  int b0;        // first sequence of the chunk
  int pos;       // units before the chunk in the visit order
  int level;     // sorted: the key being visited; else 1; 0: walk over
  int round;
  int pend_m;    // light m-block of the current pair, or -1
  int cur_b, cur_head;

  __device__ __forceinline__ explicit VarlenTileWalker(VarlenScheduler const& sched)
      : s(sched), b0(0), pos(0), round(0), pend_m(-1) {
    load_chunk();
    level = s.sorted ? warp_max(lane_key) : 1;
  }

  __device__ __forceinline__ static int warp_max(int x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
  }

  __device__ __forceinline__ void load_chunk() {
    int b = b0 + int(threadIdx.x % 32);
    lane_key = 0;
    lane_nm = 0;
    if (b < s.num_seqs) {
      VarlenSeq q = s.seq(b);
      lane_nm = (q.len_q + kBlockM - 1) / kBlockM;
      if (lane_nm > 0) lane_key = 1 + (q.len_k + kBlockN - 1) / kBlockN;
    }
  }

  // Moves the cursor to the sequence holding unit u (u never decreases
  // between calls) and returns its (sequence, head, unit in head), or false
  // when the list has fewer units.
  __device__ __forceinline__ bool find(int u, int* b, int* head, int* j, int* nm) {
    int const lane = int(threadIdx.x % 32);
    while (level > 0) {
      bool match = s.sorted ? lane_key == level : lane_key > 0;
      int c = match ? s.num_heads * s.units_per_head(lane_nm) : 0;
      int incl = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
      }
      int tot = __shfl_sync(0xffffffffu, incl, 31);
      int rel = u - pos;
      if (rel < tot) {
        int l = __ffs(__ballot_sync(0xffffffffu, incl > rel)) - 1;
        int excl = __shfl_sync(0xffffffffu, incl - c, l);
        *nm = __shfl_sync(0xffffffffu, lane_nm, l);
        *b = b0 + l;
        int per_head = s.units_per_head(*nm);
        int local = rel - excl;
        *head = local / per_head;
        *j = local - *head * per_head;
        return true;
      }
      pos += tot;
      b0 += 32;
      if (b0 >= s.num_seqs) {
        b0 = 0;
        // Sorted: one chunk (num_seqs <= 32), so the next key is its largest
        // below this one.
        level = s.sorted ? warp_max(lane_key < level ? lane_key : 0) : 0;
      }
      if (s.num_seqs > 32) load_chunk();  // else the one chunk stays
    }
    return false;
  }

  // The CTA's next tile (batch = sequence index), or false when done.
  __device__ __forceinline__ bool next(TileCoord* tc) {
    if (pend_m >= 0) {
      tc->m_block = pend_m;
      tc->batch = cur_b;
      tc->head = cur_head;
      pend_m = -1;
      return true;
    }
    int const g = int(gridDim.x), c = int(blockIdx.x);
    int u = round * g + ((s.snake && (round & 1)) ? g - 1 - c : c);
    ++round;
    int b, head, j, nm;
    if (!find(u, &b, &head, &j, &nm)) return false;
    cur_b = tc->batch = b;
    cur_head = tc->head = head;
    if (s.pairs) {
      tc->m_block = nm - 1 - j;  // heavy first
      if (j != nm - 1 - j) pend_m = j;
    } else {
      tc->m_block = j;
    }
    return true;
  }
};

}  // namespace jax_fa3::hopper
