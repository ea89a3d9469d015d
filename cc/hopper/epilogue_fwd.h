// Forward epilogue: O (already normalised, fp32 accumulators) -> input dtype,
// stored straight from registers to global memory with row bounds, and the
// fp32 LSE (one store per row, by the first thread of each quad).
//
// Each thread owns pairs of adjacent columns, so stores are 4-byte packed
// bf16x2/half2; a quad covers 16 contiguous bytes of a row per 8 columns.
// O is a small fraction of the traffic (it is written once, while K/V are
// read many times), so this skips the smem + TMA-store round trip.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

#include "cc/hopper/mainloop_fwd.h"
#include "cc/hopper/softmax.h"

namespace jax_fa3::hopper {

using namespace cute;

// Stores rows [0, len_q) of the tile (len_q: the tile's sequence length).
// q_start is the packed row of the sequence's row 0 under varlen (whose
// launcher sets the batch strides to 0), 0 when dense.
template <class Traits, class TensorO, class TensorC, int kRows>
__device__ __forceinline__ void store_output(FwdKernelParams<Traits> const& p, TileCoord tc,
                                             TensorO const& o_rc, TensorC const& c_rc,
                                             float const (&lse)[kRows], int thread_in_wg,
                                             int q_start, int len_q) {
  using Element = typename Traits::Element;
  Element* out = static_cast<Element*>(p.out) + tc.batch * p.o_batch_stride +
                 int64_t(q_start) * p.o_row_stride + tc.head * p.o_head_stride;
  int row0 = tc.m_block * Traits::kBlockM;
  cutlass::NumericArrayConverter<Element, float, 2, cutlass::FloatRoundStyle::round_to_nearest> cvt;
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    int row = row0 + int(get<0>(c_rc(r, 0)));
    if (row < len_q) {
      Element* orow = out + row * p.o_row_stride;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o_rc); c += 2) {
        cutlass::Array<float, 2> v;
        v[0] = o_rc(r, c);
        v[1] = o_rc(r, c + 1);
        int col = int(get<1>(c_rc(r, c)));
        *reinterpret_cast<cutlass::Array<Element, 2>*>(orow + col) = cvt(v);
      }
      if (thread_in_wg % 4 == 0) {
        p.lse[tc.batch * p.lse_batch_stride + tc.head * p.lse_head_stride + q_start + row] =
            lse[r];
      }
    }
  }
}

}  // namespace jax_fa3::hopper
