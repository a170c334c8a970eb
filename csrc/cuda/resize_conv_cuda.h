// CUDA implementation of the fused resize + 1x1 conv.
#pragma once

#include <cuda_runtime.h>

#include "resize_conv.h"

namespace nvp::cuda {

enum class DType { kFloat32, kFloat16 };

// y = W · resize(x) + b, every pointer in device memory of the current device,
// all work enqueued on `stream` (nothing synchronises). Resize-first is one
// launch; conv-first is two (conv at input resolution into a stream-ordered
// float32 workspace, then the resize), because the conv result of one input
// pixel feeds up to four output pixels owned by different blocks.
void resize_conv1x1(const Problem& p, Order order, DType dtype, const void* x, const void* weight, const void* bias,
                    void* y, cudaStream_t stream);

// Throws std::runtime_error naming `what` when `status` is an error.
void check(cudaError_t status, const char* what);

}  // namespace nvp::cuda
