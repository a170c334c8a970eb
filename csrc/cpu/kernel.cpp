// The CPU compute kernels, compiled once per instruction set. CMake builds this
// file several times with NVP_CPU_ISA set to the namespace (baseline, avx2,
// avx512) and NVP_VEC_BYTES to the vector width, each with matching -m flags.
//
// Work is split into tiles that stay in L1/L2:
//  * resize-first: per tile of PC output pixels, interpolate the C_in input
//    channels into a C_in x PC buffer, then one register-blocked GEMM writes
//    the C_out x PC output tile straight into y.
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

// Taps of one axis as separate arrays so the gathers vectorise.
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

// dst[0..count) = bilinear samples of one channel plane `src` (width w) along
// output row `oy` from column ox0.
inline void interpolate_row(const float* src, int64_t w, const AxisTaps& ty, const AxisTaps& tx, int64_t oy,
                            int64_t ox0, int64_t count, float* dst) {
  const float* r0 = src + ty.i0[oy] * w;
  const float* r1 = src + ty.i1[oy] * w;
  const float wy0 = ty.w0[oy], wy1 = ty.w1[oy];
  const int* x0 = tx.i0.data() + ox0;
  const int* x1 = tx.i1.data() + ox0;
  const float* wx0 = tx.w0.data() + ox0;
  const float* wx1 = tx.w1.data() + ox0;
  for (int64_t s = 0; s < count; ++s) {
    const float top = wx0[s] * r0[x0[s]] + wx1[s] * r0[x1[s]];
    const float bottom = wx0[s] * r1[x0[s]] + wx1[s] * r1[x1[s]];
    dst[s] = wy0 * top + wy1 * bottom;
  }
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
  const AxisTaps ty(p.h, p.ho), tx(p.w, p.wo);
  // A C_in x PC tile of interpolated input stays within ~64 KiB.
  const int64_t tile = std::max<int64_t>(kNR, (16384 / p.c_in) / kNR * kNR);
  const int64_t tiles_per_frame = (p.out_plane() + tile - 1) / tile;
  const int64_t items = p.frames() * tiles_per_frame;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(static_cast<size_t>(p.c_in * tile));
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t f = item / tiles_per_frame;
      const int64_t p0 = (item % tiles_per_frame) * tile;
      const int64_t count = std::min(tile, p.out_plane() - p0);
      const float* xf = x + p.in_frame_offset(f);
      for (int64_t ci = 0; ci < p.c_in; ++ci) {
        const float* plane = xf + ci * p.in_channel_stride();
        float* dst = buffer.data() + ci * tile;
        for (int64_t j = 0; j < count;) {
          const int64_t pix = p0 + j, oy = pix / p.wo, ox = pix % p.wo;
          const int64_t run = std::min(p.wo - ox, count - j);
          interpolate_row(plane, p.w, ty, tx, oy, ox, run, dst + j);
          j += run;
        }
      }
      gemm_bias(p.c_out, count, p.c_in, weight, buffer.data(), tile, bias, y + p.out_frame_offset(f) + p0,
                p.out_channel_stride());
    }
  }
}

void conv_first(const Problem& p, const float* x, const float* weight, const float* bias, float* y, int threads) {
  const AxisTaps ty(p.h, p.ho), tx(p.w, p.wo);
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
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t co = r / p.ho, oy = r % p.ho;
        interpolate_row(conv.data() + co * p.in_plane(), p.w, ty, tx, oy, 0, p.wo,
                        yf + co * p.out_channel_stride() + oy * p.wo);
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
