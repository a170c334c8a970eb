// The fused micro-adapter op shared by every device: bilinear resize over
// (H, W) followed by a 1x1 convolution, y = W · resize(x) + b.
//
// Both ops are linear and the bilinear weights of one output pixel sum to one,
// so W · resize(x) + b == resize(W · x + b). Each device implementation picks
// the cheaper order from `choose_order` and never materialises the resized
// C_in tensor.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define NVP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NVP_HOST_DEVICE inline
#endif

namespace nvp {

enum class Order : int {
  kAuto = 0,
  kResizeFirst = 1,  // interpolate C_in channels per output pixel, then the 1x1 conv
  kConvFirst = 2,    // 1x1 conv at input resolution, then interpolate C_out channels
};

// One problem instance. A 4-D input (N, C, H, W) is the 5-D case with T == 1:
// element (n, c, t, y, x) lives at ((n*C + c)*T + t)*H*W + y*W + x, so a
// "frame" is one (n, t) pair and channels are T*H*W apart.
struct Problem {
  int64_t n = 0, c_in = 0, c_out = 0, t = 1, h = 0, w = 0, ho = 0, wo = 0;
  bool five_d = false;
  bool has_bias = false;

  NVP_HOST_DEVICE int64_t frames() const { return n * t; }
  NVP_HOST_DEVICE int64_t in_plane() const { return h * w; }
  NVP_HOST_DEVICE int64_t out_plane() const { return ho * wo; }
  // Offset of channel 0 of frame f, and the distance between channels.
  NVP_HOST_DEVICE int64_t in_frame_offset(int64_t f) const { return (f / t) * c_in * t * in_plane() + (f % t) * in_plane(); }
  NVP_HOST_DEVICE int64_t out_frame_offset(int64_t f) const { return (f / t) * c_out * t * out_plane() + (f % t) * out_plane(); }
  NVP_HOST_DEVICE int64_t in_channel_stride() const { return t * in_plane(); }
  NVP_HOST_DEVICE int64_t out_channel_stride() const { return t * out_plane(); }
  std::vector<int64_t> out_shape() const {
    if (five_d) return {n, c_out, t, ho, wo};
    return {n, c_out, ho, wo};
  }
};

namespace detail {
// Messages are built with std::to_string, not iostreams: formatting through a stringstream crashed
// the interpreter on the lent H200's image (Ubuntu 24.04, GCC 13.3, Python 3.12), in _C and _C_cuda alike.
inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "(";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + (s.size() == 1 ? ",)" : ")");
}
}  // namespace detail

// Validates shapes and builds the Problem; throws std::invalid_argument with a
// message naming the argument at fault. Weight may be (C_out, C_in) or the
// conv layout (C_out, C_in, 1, 1); bias, when given, is (C_out,).
inline Problem make_problem(const std::vector<int64_t>& x, const std::vector<int64_t>& weight,
                            const std::vector<int64_t>* bias, int64_t ho, int64_t wo) {
  using detail::shape_str;
  if (x.size() != 4 && x.size() != 5)
    throw std::invalid_argument("x must be 4-D (N, C_in, H, W) or 5-D (N, C_in, T, H, W); got shape " +
                                shape_str(x));
  for (int64_t d : x)
    if (d <= 0) throw std::invalid_argument("x has an empty dimension: shape " + shape_str(x));
  const bool conv_layout = weight.size() == 4 && weight[2] == 1 && weight[3] == 1;
  if (!(weight.size() == 2 || conv_layout))
    throw std::invalid_argument("weight must be (C_out, C_in) or (C_out, C_in, 1, 1); got shape " +
                                shape_str(weight));
  if (weight[0] <= 0) throw std::invalid_argument("weight has C_out = 0: shape " + shape_str(weight));
  if (weight[1] != x[1])
    throw std::invalid_argument("channel mismatch: x has C_in = " + std::to_string(x[1]) + " but weight " +
                                shape_str(weight) + " expects C_in = " + std::to_string(weight[1]));
  if (bias && !(bias->size() == 1 && (*bias)[0] == weight[0]))
    throw std::invalid_argument("bias must have shape (" + std::to_string(weight[0]) + ",) to match weight; got " +
                                shape_str(*bias));
  if (ho <= 0 || wo <= 0)
    throw std::invalid_argument("size must be two positive integers (Ho, Wo); got (" + std::to_string(ho) + ", " +
                                std::to_string(wo) + ")");
  Problem p;
  p.five_d = x.size() == 5;
  p.n = x[0];
  p.c_in = x[1];
  p.t = p.five_d ? x[2] : 1;
  p.h = x[x.size() - 2];
  p.w = x[x.size() - 1];
  p.c_out = weight[0];
  p.ho = ho;
  p.wo = wo;
  p.has_bias = bias != nullptr;
  return p;
}

// Multiply-accumulates of each order; a bilinear tap is a MAC with a gather,
// so it is charged like a few GEMM MACs.
constexpr double kTapCost = 2.0;

inline double resize_first_cost(const Problem& p) {
  return double(p.out_plane()) * double(p.c_in) * (double(p.c_out) + 4 * kTapCost);
}
inline double conv_first_cost(const Problem& p) {
  return double(p.in_plane()) * double(p.c_in) * double(p.c_out) + double(p.out_plane()) * double(p.c_out) * 4 * kTapCost;
}

inline Order choose_order(const Problem& p, Order requested) {
  if (requested != Order::kAuto) return requested;
  return conv_first_cost(p) < resize_first_cost(p) ? Order::kConvFirst : Order::kResizeFirst;
}

// Source taps of output index `dst` along one axis, with the semantics of
// torch.nn.functional.interpolate(mode="bilinear", align_corners=False) and
// ONNX Resize(mode="linear", coordinate_transformation_mode="half_pixel"):
// src = (dst + 0.5) * in/out - 0.5, clamped at 0. Computed in double so the
// weights carry no coordinate rounding (float32 loses ~1e-5 at src ~ 100);
// this runs once per output row/column, never per channel.
struct Tap {
  int i0, i1;
  float w0, w1;
};

NVP_HOST_DEVICE Tap linear_tap(int64_t dst, int64_t in, int64_t out) {
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  double src = scale * (static_cast<double>(dst) + 0.5) - 0.5;
  if (src < 0.0) src = 0.0;
  Tap tap;
  tap.i0 = static_cast<int>(src);
  if (tap.i0 > in - 1) tap.i0 = static_cast<int>(in - 1);
  tap.i1 = tap.i0 < in - 1 ? tap.i0 + 1 : tap.i0;
  double w1 = src - static_cast<double>(tap.i0);
  if (w1 > 1.0) w1 = 1.0;
  tap.w1 = static_cast<float>(w1);
  tap.w0 = static_cast<float>(1.0 - w1);
  return tap;
}

}  // namespace nvp
