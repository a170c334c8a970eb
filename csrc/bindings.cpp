// nvp_rt._C: the CPU kernels behind nvp_rt.ops. Arguments arrive already
// normalised by nvp_rt/ops.py; everything that could crash is checked here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/resize_conv_cpu.h"
#include "resize_conv.h"

namespace py = pybind11;

namespace {

std::vector<int64_t> shape_of(const py::array& a) { return std::vector<int64_t>(a.shape(), a.shape() + a.ndim()); }

void require_float32(const py::array& a, const char* name) {
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string(name) + " must be float32 on CPU (float16 is supported on CUDA only); got " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous; pass numpy.ascontiguousarray(" + name + ")");
}

bool overlaps(const py::array& a, const py::array& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

py::array_t<float> resize_conv1x1(const py::array& x, const py::array& weight, const std::optional<py::array>& bias,
                                  int64_t ho, int64_t wo, int order, int threads, std::optional<py::array> out) {
  require_float32(x, "x");
  require_float32(weight, "weight");
  if (bias) require_float32(*bias, "bias");
  std::vector<int64_t> bias_shape;
  if (bias) bias_shape = shape_of(*bias);
  const nvp::Problem p = nvp::make_problem(shape_of(x), shape_of(weight), bias ? &bias_shape : nullptr, ho, wo);
  if (order < 0 || order > 2) throw py::value_error("order must be 0 (auto), 1 (resize first) or 2 (conv first)");

  const std::vector<int64_t> out_shape = p.out_shape();
  py::array_t<float> y;
  if (out) {
    require_float32(*out, "out");
    if (shape_of(*out) != out_shape)
      throw py::value_error("out has shape " + nvp::detail::shape_str(shape_of(*out)) + " but the result is " +
                            nvp::detail::shape_str(out_shape));
    if (!out->writeable()) throw py::value_error("out is read-only");
    for (const py::array* in : {&x, &weight})
      if (overlaps(*out, *in)) throw py::value_error("out must not overlap the inputs");
    y = py::reinterpret_borrow<py::array_t<float>>(*out);
  } else {
    y = py::array_t<float>(out_shape);
  }
  const float* xp = static_cast<const float*>(x.data());
  const float* wp = static_cast<const float*>(weight.data());
  const float* bp = bias ? static_cast<const float*>(bias->data()) : nullptr;
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release release;
    nvp::cpu::resize_conv1x1(p, static_cast<nvp::Order>(order), xp, wp, bp, yp, threads);
  }
  return y;
}

std::string chosen_order(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape, int64_t ho,
                         int64_t wo) {
  const nvp::Problem p = nvp::make_problem(x_shape, w_shape, nullptr, ho, wo);
  return nvp::choose_order(p, nvp::Order::kAuto) == nvp::Order::kConvFirst ? "conv_first" : "resize_first";
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

py::dict build_info() {
  py::dict d;
  d["cpu_isa"] = nvp::cpu::capability();
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#ifdef NVP_BUILT_WITH_CUDA
  d["cuda"] = true;
  d["cuda_architectures"] = NVP_CUDA_ARCHITECTURES;
#else
  d["cuda"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "nvp CPU kernels (use nvp_rt.ops)";
  m.def("resize_conv1x1", &resize_conv1x1, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("ho"),
        py::arg("wo"), py::arg("order"), py::arg("threads"), py::arg("out"));
  m.def("chosen_order", &chosen_order, py::arg("x_shape"), py::arg("weight_shape"), py::arg("ho"), py::arg("wo"));
  m.def("cpu_capability", &nvp::cpu::capability);
  m.def("max_threads", &max_threads);
  m.def("build_info", &build_info);
}
