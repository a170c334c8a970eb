// The CPU compute kernels, compiled once per instruction set. CMake builds this
// file several times with NVP_CPU_ISA set to the namespace (baseline, avx2,
// avx512) and NVP_VEC_BYTES to the vector width, each with matching -m flags.
//
// Work is split into tiles that stay in L1/L2:
//  * resize-first: per tile of whole output rows, interpolate the C_in input
//    channels into a C_in x tile buffer, then one register-blocked GEMM
//    writes the C_out x tile output straight into y.
//  * conv-first: per frame, one GEMM computes W·x + b at input resolution
//    (C_out x H*W, smaller than the output by construction of the cost model),
//    then each output row is interpolated from it.
#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/resize_conv_cpu.h"

#ifndef NVP_CPU_ISA
#error "NVP_CPU_ISA must name the instruction-set namespace"
#endif
#ifndef NVP_VEC_BYTES
#error "NVP_VEC_BYTES must give the vector width in bytes"
#endif

namespace nvp::cpu::NVP_CPU_ISA {
namespace {

constexpr int kLanes = NVP_VEC_BYTES / int(sizeof(float));
typedef float vec __attribute__((vector_size(NVP_VEC_BYTES)));

// Register blocking: MR weight rows x NV vectors of pixels, sized so that the
// accumulators plus one row of B fit the register file (32 zmm / 16 ymm / 16 xmm).
#if NVP_VEC_BYTES == 64
constexpr int kMR = 8, kNV = 2;
#else
constexpr int kMR = 4, kNV = 3;
#endif
constexpr int kNR = kNV * kLanes;

inline vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

// C[MR x NV*lanes] = A[MR x K] · B[K x NV*lanes] + bias.
template <int MR, int NV>
inline void micro_kernel(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, const float* bias,
                         float* C, int64_t ldc) {
  vec acc[MR][NV];
  for (int i = 0; i < MR; ++i) {
    const float b0 = bias ? bias[i] : 0.f;
    for (int j = 0; j < NV; ++j) acc[i][j] = vec{} + b0;
  }
  for (int64_t k = 0; k < K; ++k) {
    vec b[NV];
    for (int j = 0; j < NV; ++j) b[j] = load(B + k * ldb + j * kLanes);
    for (int i = 0; i < MR; ++i) {
      const float a = A[i * lda + k];
      for (int j = 0; j < NV; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) store(C + i * ldc + j * kLanes, acc[i][j]);
}

template <int NV>
inline void column_panel(int64_t M, int64_t K, const float* A, const float* B, int64_t ldb, const float* bias,
                         float* C, int64_t ldc) {
  int64_t m = 0;
  for (; m + kMR <= M; m += kMR) micro_kernel<kMR, NV>(K, A + m * K, K, B, ldb, bias ? bias + m : nullptr, C + m * ldc, ldc);
  for (; m < M; ++m) micro_kernel<1, NV>(K, A + m * K, K, B, ldb, bias ? bias + m : nullptr, C + m * ldc, ldc);
}

// C[M x N] (row stride ldc) = A[M x K] (dense row-major) · B[K x N] (row stride ldb) + bias[M].
void gemm_bias(int64_t M, int64_t N, int64_t K, const float* A, const float* B, int64_t ldb, const float* bias,
               float* C, int64_t ldc) {
  int64_t n = 0;
  for (; n + kNR <= N; n += kNR) column_panel<kNV>(M, K, A, B + n, ldb, bias, C + n, ldc);
  for (; n + kLanes <= N; n += kLanes) column_panel<1>(M, K, A, B + n, ldb, bias, C + n, ldc);
  if (n == N) return;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = n; j < N; ++j) {
      float s = bias ? bias[m] : 0.f;
      for (int64_t k = 0; k < K; ++k) s += A[m * K + k] * B[k * ldb + j];
      C[m * ldc + j] = s;
    }
  }
}

// Taps of one axis as separate arrays.
struct AxisTaps {
  std::vector<int> i0, i1;
  std::vector<float> w0, w1;
  AxisTaps(int64_t in, int64_t out) : i0(out), i1(out), w0(out), w1(out) {
    for (int64_t d = 0; d < out; ++d) {
      const Tap t = linear_tap(d, in, out);
      i0[d] = t.i0;
      i1[d] = t.i1;
      w0[d] = t.w0;
      w1[d] = t.w1;
    }
  }
};

typedef int32_t ivec __attribute__((vector_size(NVP_VEC_BYTES)));

// Lanes of the 2-vector window (lo, hi) picked by idx. GCC lowers this to one
// two-source permute (vpermt2ps on AVX-512); elsewhere a lane loop.
inline vec permute(vec lo, vec hi, ivec idx) {
#if defined(__GNUC__) && !defined(__clang__)
  return __builtin_shuffle(lo, hi, idx);
#else
  vec out;
  for (int l = 0; l < kLanes; ++l) out[l] = idx[l] < kLanes ? lo[idx[l]] : hi[idx[l] - kLanes];
  return out;
#endif
}

// The horizontal pass of a whole output row, one vector of outputs at a time.
// When the sources of every vector fit a window of two vectors (any upscale,
// downscales up to ~2x), each tap is a two-vector permute of the window
// instead of a gather, which costs several times more per element.
class RowResampler {
 public:
  RowResampler(int64_t in, int64_t out) : taps_(in, out), in_(in), out_(out) {
    permutable_ = true;
    for (int64_t o = 0; o < out; o += kLanes) {
      const int base = std::min<int>(taps_.i0[o], std::max<int>(0, int(in) - 2 * kLanes));
      Block b{base, {}, {}, {}, {}};
      for (int l = 0; l < kLanes; ++l) {
        const int64_t d = std::min<int64_t>(o + l, out - 1);
        b.idx0[l] = taps_.i0[d] - base;
        b.idx1[l] = taps_.i1[d] - base;
        b.w0[l] = taps_.w0[d];
        b.w1[l] = taps_.w1[d];
        if (b.idx0[l] < 0 || b.idx1[l] >= 2 * kLanes) permutable_ = false;
      }
      blocks_.push_back(b);
    }
  }

  const AxisTaps& taps() const { return taps_; }
  bool permutable() const { return permutable_; }
  // Scratch a row needs: the input width padded so window loads stay in bounds.
  int64_t scratch_size() const { return in_ + 2 * kLanes; }

  // dst[0..out) from the blended source row `row` (scratch_size() floats); only when permutable().
  void run(const float* __restrict__ row, float* __restrict__ dst) const {
    for (size_t k = 0; k < blocks_.size(); ++k) {
      const Block& b = blocks_[k];
      const vec lo = load(row + b.base), hi = load(row + b.base + kLanes);
      const vec v = b.w0 * permute(lo, hi, b.idx0) + b.w1 * permute(lo, hi, b.idx1);
      const int64_t o = int64_t(k) * kLanes;
      if (o + kLanes <= out_) {
        store(dst + o, v);
      } else {
        float tail[kLanes];
        store(tail, v);
        std::memcpy(dst + o, tail, sizeof(float) * (out_ - o));
      }
    }
  }

 private:
  struct Block {
    int base;
    ivec idx0, idx1;
    vec w0, w1;
  };
  AxisTaps taps_;
  int64_t in_, out_;
  bool permutable_ = false;
  std::vector<Block> blocks_;
};

// Output row `oy` of one channel plane `src` (h x w) into dst[0..wo). Where
// the permute path applies, blend the two source rows (contiguous,
// vectorised) and resample the blend; for larger downscales, blending whole
// rows would touch far more columns than the outputs use, so each output
// gathers its four taps directly.
inline void interpolate_row(const float* __restrict__ src, int64_t w, const AxisTaps& ty, const RowResampler& rx,
                            int64_t oy, float* __restrict__ dst, float* __restrict__ row) {
  const float* __restrict__ r0 = src + ty.i0[oy] * w;
  const float* __restrict__ r1 = src + ty.i1[oy] * w;
  const float wy0 = ty.w0[oy], wy1 = ty.w1[oy];
  if (!rx.permutable()) {
    const AxisTaps& tx = rx.taps();
    for (size_t o = 0; o < tx.i0.size(); ++o) {
      const int x0 = tx.i0[o], x1 = tx.i1[o];
      dst[o] = wy0 * (tx.w0[o] * r0[x0] + tx.w1[o] * r0[x1]) + wy1 * (tx.w0[o] * r1[x0] + tx.w1[o] * r1[x1]);
    }
    return;
  }
  for (int64_t x = 0; x < w; ++x) row[x] = wy0 * r0[x] + wy1 * r1[x];
  rx.run(row, dst);
}

int resolve_threads(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

void resize_first(const Problem& p, const float* x, const float* weight, const float* bias, float* y, int threads) {
  const AxisTaps ty(p.h, p.ho);
  const RowResampler rx(p.w, p.wo);
  // Tiles of whole output rows; a C_in x tile buffer of interpolated input
  // stays within ~64 KiB where rows allow.
  const int64_t rows_per_tile = std::max<int64_t>(1, (16384 / p.c_in) / p.wo);
  const int64_t tile = rows_per_tile * p.wo;
  const int64_t tiles_per_frame = (p.ho + rows_per_tile - 1) / rows_per_tile;
  const int64_t items = p.frames() * tiles_per_frame;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(static_cast<size_t>(p.c_in * tile));
    std::vector<float> row(static_cast<size_t>(rx.scratch_size()), 0.f);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t f = item / tiles_per_frame;
      const int64_t oy0 = (item % tiles_per_frame) * rows_per_tile;
      const int64_t rows = std::min(rows_per_tile, p.ho - oy0);
      const float* xf = x + p.in_frame_offset(f);
      for (int64_t ci = 0; ci < p.c_in; ++ci) {
        const float* plane = xf + ci * p.in_channel_stride();
        for (int64_t r = 0; r < rows; ++r)
          interpolate_row(plane, p.w, ty, rx, oy0 + r, buffer.data() + ci * tile + r * p.wo, row.data());
      }
      gemm_bias(p.c_out, rows * p.wo, p.c_in, weight, buffer.data(), tile, bias,
                y + p.out_frame_offset(f) + oy0 * p.wo, p.out_channel_stride());
    }
  }
}

void conv_first(const Problem& p, const float* x, const float* weight, const float* bias, float* y, int threads) {
  const AxisTaps ty(p.h, p.ho);
  const RowResampler rx(p.w, p.wo);
  std::vector<float> conv(static_cast<size_t>(p.c_out * p.in_plane()));
  // Enough column tiles to keep every thread busy, each a multiple of the panel width.
  const int64_t per_thread = (p.in_plane() + threads * 2 - 1) / (threads * 2);
  const int64_t tile = std::max<int64_t>(kNR, (per_thread + kNR - 1) / kNR * kNR);
  const int64_t tiles = (p.in_plane() + tile - 1) / tile;
  const int64_t rows = p.c_out * p.ho;
  for (int64_t f = 0; f < p.frames(); ++f) {
    const float* xf = x + p.in_frame_offset(f);
    float* yf = y + p.out_frame_offset(f);
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t q0 = t * tile;
        gemm_bias(p.c_out, std::min(tile, p.in_plane() - q0), p.c_in, weight, xf + q0, p.in_channel_stride(), bias,
                  conv.data() + q0, p.in_plane());
      }
      std::vector<float> row(static_cast<size_t>(rx.scratch_size()), 0.f);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t co = r / p.ho, oy = r % p.ho;
        interpolate_row(conv.data() + co * p.in_plane(), p.w, ty, rx, oy, yf + co * p.out_channel_stride() + oy * p.wo,
                        row.data());
      }
    }
  }
}

}  // namespace

void resize_conv1x1(const Problem& p, Order order, const float* x, const float* weight, const float* bias, float* y,
                    int threads) {
  threads = resolve_threads(threads);
  if (choose_order(p, order) == Order::kConvFirst)
    conv_first(p, x, weight, bias, y, threads);
  else
    resize_first(p, x, weight, bias, y, threads);
}

}  // namespace nvp::cpu::NVP_CPU_ISA
