// CPU implementation of the fused resize + 1x1 conv. The compute kernels are
// compiled once per instruction set (avx512, avx2, baseline) and the best one
// the running CPU supports is picked at first use, so one binary is portable.
#pragma once

#include "resize_conv.h"

namespace nvp::cpu {

// y = W · resize(x) + b for float32 C-contiguous buffers; `threads` <= 0 means
// all available threads. Releases nothing and allocates only per-thread tiles.
void resize_conv1x1(const Problem& p, Order order, const float* x, const float* weight, const float* bias, float* y,
                    int threads);

// Name of the instruction set the kernels run with on this CPU.
const char* capability();

#define NVP_DECLARE_CPU_KERNEL(isa)                                                                              \
  namespace isa {                                                                                                \
  void resize_conv1x1(const Problem& p, Order order, const float* x, const float* weight, const float* bias, \
                      float* y, int threads);                                                                    \
  }
NVP_DECLARE_CPU_KERNEL(baseline)
NVP_DECLARE_CPU_KERNEL(avx2)
NVP_DECLARE_CPU_KERNEL(avx512)
#undef NVP_DECLARE_CPU_KERNEL

}  // namespace nvp::cpu
