// Picks the widest kernel build the running CPU supports, once.
#include "cpu/resize_conv_cpu.h"

namespace nvp::cpu {
namespace {

using Kernel = void (*)(const Problem&, Order, const float*, const float*, const float*, float*, int);

struct Selected {
  Kernel kernel;
  const char* name;
};

Selected select() {
#if defined(NVP_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return {avx512::resize_conv1x1, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {avx2::resize_conv1x1, "avx2"};
#endif
  return {baseline::resize_conv1x1, "baseline"};
}

const Selected& selected() {
  static const Selected s = select();
  return s;
}

}  // namespace

void resize_conv1x1(const Problem& p, Order order, const float* x, const float* weight, const float* bias, float* y,
                    int threads) {
  selected().kernel(p, order, x, weight, bias, y, threads);
}

const char* capability() { return selected().name; }

}  // namespace nvp::cpu
