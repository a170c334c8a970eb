// CUDA kernels of the fused resize + 1x1 conv.
//
// resize_conv_kernel: one thread per output pixel and a tile of kCoTile output
// channels held in registers. For each chunk of input channels the block
// stages the weight tile in shared memory, transposed so that one 16-byte
// broadcast load serves four output channels; each thread interpolates its
// pixel once per input channel and feeds all kCoTile accumulators. With kResize = false it is a plain 1x1 conv, the first stage of
// the conv-first order; resize_kernel is the second.
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "cuda/resize_conv_cuda.h"

namespace nvp::cuda {
namespace {

constexpr int kPixelsPerBlock = 128;
constexpr int kCoTile = 32;
constexpr int kCiChunk = 32;
constexpr int64_t kMaxGridZ = 65535;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// `src` gives the input layout and the resize geometry (h, w -> ho, wo);
// `dst` gives the output layout. Frames run along grid z (strided when more
// frames than the grid allows).
template <typename TIn, typename TOut, bool kResize>
__global__ void __launch_bounds__(kPixelsPerBlock)
    resize_conv_kernel(Problem src, Problem dst, const TIn* __restrict__ x, const TIn* __restrict__ weight,
                       const TIn* __restrict__ bias, TOut* __restrict__ y) {
  __shared__ __align__(16) float w_tile[kCiChunk][kCoTile];
  const int64_t pix = int64_t(blockIdx.x) * kPixelsPerBlock + threadIdx.x;
  const int64_t co0 = int64_t(blockIdx.y) * kCoTile;
  const bool active = pix < dst.out_plane();

  int64_t off00 = pix, off01 = 0, off10 = 0, off11 = 0;
  float w00 = 1.f, w01 = 0.f, w10 = 0.f, w11 = 0.f;
  if (kResize && active) {
    const Tap ty = linear_tap(pix / src.wo, src.h, src.ho);
    const Tap tx = linear_tap(pix % src.wo, src.w, src.wo);
    off00 = int64_t(ty.i0) * src.w + tx.i0;
    off01 = int64_t(ty.i0) * src.w + tx.i1;
    off10 = int64_t(ty.i1) * src.w + tx.i0;
    off11 = int64_t(ty.i1) * src.w + tx.i1;
    w00 = ty.w0 * tx.w0;
    w01 = ty.w0 * tx.w1;
    w10 = ty.w1 * tx.w0;
    w11 = ty.w1 * tx.w1;
  }

  for (int64_t f = blockIdx.z; f < src.frames(); f += gridDim.z) {
    const TIn* xf = x + src.in_frame_offset(f);
    float acc[kCoTile];
#pragma unroll
    for (int j = 0; j < kCoTile; ++j) acc[j] = 0.f;

    for (int64_t ci0 = 0; ci0 < src.c_in; ci0 += kCiChunk) {
      __syncthreads();
      // Output channel fastest: conflict-free shared stores (the weights are tiny and cached).
      for (int i = threadIdx.x; i < kCoTile * kCiChunk; i += kPixelsPerBlock) {
        const int c = i / kCoTile, r = i % kCoTile;
        const int64_t co = co0 + r, ci = ci0 + c;
        w_tile[c][r] = (co < dst.c_out && ci < src.c_in) ? to_float(weight[co * src.c_in + ci]) : 0.f;
      }
      __syncthreads();
      if (!active) continue;
      const int chunk = int(min(int64_t(kCiChunk), src.c_in - ci0));
      for (int c = 0; c < chunk; ++c) {
        const TIn* plane = xf + (ci0 + c) * src.in_channel_stride();
        float v = to_float(plane[off00]);
        if (kResize)
          v = w00 * v + w01 * to_float(plane[off01]) + w10 * to_float(plane[off10]) + w11 * to_float(plane[off11]);
        const float4* w4 = reinterpret_cast<const float4*>(w_tile[c]);
#pragma unroll
        for (int q = 0; q < kCoTile / 4; ++q) {
          const float4 wq = w4[q];
          acc[4 * q + 0] += wq.x * v;
          acc[4 * q + 1] += wq.y * v;
          acc[4 * q + 2] += wq.z * v;
          acc[4 * q + 3] += wq.w * v;
        }
      }
    }
    if (!active) continue;
    TOut* yf = y + dst.out_frame_offset(f) + pix;
#pragma unroll
    for (int j = 0; j < kCoTile; ++j) {
      const int64_t co = co0 + j;
      if (co < dst.c_out)
        yf[co * dst.out_channel_stride()] = from_float<TOut>(acc[j] + (bias ? to_float(bias[co]) : 0.f));
    }
  }
}

// Bilinear resize of a float32 (frames, C_out, H, W) buffer into y laid out as `p`.
template <typename TOut>
__global__ void resize_kernel(Problem p, const float* __restrict__ conv, TOut* __restrict__ y) {
  const int64_t total = p.frames() * p.c_out * p.out_plane();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pix = i % p.out_plane();
    const int64_t plane_index = i / p.out_plane();  // f * c_out + co
    const int64_t co = plane_index % p.c_out, f = plane_index / p.c_out;
    const Tap ty = linear_tap(pix / p.wo, p.h, p.ho);
    const Tap tx = linear_tap(pix % p.wo, p.w, p.wo);
    const float* plane = conv + plane_index * p.in_plane();
    const float* r0 = plane + int64_t(ty.i0) * p.w;
    const float* r1 = plane + int64_t(ty.i1) * p.w;
    const float v = ty.w0 * (tx.w0 * r0[tx.i0] + tx.w1 * r0[tx.i1]) + ty.w1 * (tx.w0 * r1[tx.i0] + tx.w1 * r1[tx.i1]);
    y[p.out_frame_offset(f) + co * p.out_channel_stride() + pix] = from_float<TOut>(v);
  }
}

dim3 conv_grid(const Problem& dst) {
  return dim3(unsigned((dst.out_plane() + kPixelsPerBlock - 1) / kPixelsPerBlock),
              unsigned((dst.c_out + kCoTile - 1) / kCoTile), unsigned(std::min(dst.frames(), kMaxGridZ)));
}

template <typename T>
void launch(const Problem& p, Order order, const T* x, const T* weight, const T* bias, T* y, cudaStream_t stream) {
  if ((p.c_out + kCoTile - 1) / kCoTile > 65535) throw std::invalid_argument("C_out is too large for the CUDA kernel");
  if (choose_order(p, order) == Order::kResizeFirst) {
    resize_conv_kernel<T, T, true><<<conv_grid(p), kPixelsPerBlock, 0, stream>>>(p, p, x, weight, bias, y);
    check(cudaGetLastError(), "launching resize_conv_kernel");
    return;
  }
  // Conv at input resolution: the same kernel with identity taps, written as
  // float32 (frames, C_out, H, W) so the resize reads full precision.
  Problem src = p;
  src.ho = p.h;
  src.wo = p.w;
  Problem mid;
  mid.n = p.frames();
  mid.c_in = p.c_in;
  mid.c_out = p.c_out;
  mid.h = mid.ho = p.h;
  mid.w = mid.wo = p.w;
  float* conv = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&conv), sizeof(float) * mid.frames() * p.c_out * p.in_plane(), stream),
        "allocating the conv-first workspace");
  resize_conv_kernel<T, float, false><<<conv_grid(mid), kPixelsPerBlock, 0, stream>>>(src, mid, x, weight, bias, conv);
  cudaError_t launched = cudaGetLastError();
  if (launched == cudaSuccess) {
    const int64_t total = p.frames() * p.c_out * p.out_plane();
    const unsigned blocks = unsigned(std::min<int64_t>((total + 255) / 256, int64_t(1) << 20));
    resize_kernel<T><<<blocks, 256, 0, stream>>>(p, conv, y);
    launched = cudaGetLastError();
  }
  cudaFreeAsync(conv, stream);
  check(launched, "launching the conv-first kernels");
}

}  // namespace

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error while ") + what + ": " + cudaGetErrorString(status));
}

void resize_conv1x1(const Problem& p, Order order, DType dtype, const void* x, const void* weight, const void* bias,
                    void* y, cudaStream_t stream) {
  if (dtype == DType::kFloat32)
    launch(p, order, static_cast<const float*>(x), static_cast<const float*>(weight), static_cast<const float*>(bias),
           static_cast<float*>(y), stream);
  else
    launch(p, order, static_cast<const __half*>(x), static_cast<const __half*>(weight),
           static_cast<const __half*>(bias), static_cast<__half*>(y), stream);
}

}  // namespace nvp::cuda
