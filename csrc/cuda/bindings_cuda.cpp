// nvp_rt._C_cuda: the CUDA kernels and a small owning device array. Imported
// lazily by nvp_rt.ops only when a CUDA array or device is involved; linking
// cudart statically means importing it needs no driver, and calls report a
// missing GPU as a Python exception.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cuda/dlpack.h"
#include "cuda/resize_conv_cuda.h"

namespace py = pybind11;
using nvp::cuda::check;
using nvp::cuda::DType;

namespace {

size_t itemsize(DType d) { return d == DType::kFloat32 ? 4 : 2; }

DType parse_typestr(const std::string& typestr, const char* name) {
  if (typestr == "<f4") return DType::kFloat32;
  if (typestr == "<f2") return DType::kFloat16;
  throw py::type_error(std::string(name) + " must be float32 or float16 on CUDA; got typestr '" + typestr + "'");
}

std::string typestr_of(DType d) { return d == DType::kFloat32 ? "<f4" : "<f2"; }

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The device holding `ptr`; throws when it is not device (or managed) memory.
int device_of(uintptr_t ptr, const char* name) {
  cudaPointerAttributes attr{};
  check(cudaPointerGetAttributes(&attr, reinterpret_cast<void*>(ptr)), "inspecting an input pointer");
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw py::value_error(std::string(name) + " is not in CUDA device memory; all arguments must be on the same device");
  return attr.device;
}

// Sets the current device for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "querying the current device");
    if (device != previous_) check(cudaSetDevice(device), "selecting the device");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

struct Buffer {
  void* ptr = nullptr;
  int device = 0;
  Buffer(size_t bytes, int dev) : device(dev) {
    DeviceGuard guard(dev);
    check(cudaMalloc(&ptr, bytes ? bytes : 1), "allocating device memory");
  }
  ~Buffer() {
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device);
    cudaFree(ptr);
    cudaSetDevice(previous);
  }
};

// A C-contiguous device array that nvp owns; exported to other frameworks
// through __cuda_array_interface__ and __dlpack__ without copies.
class DeviceArray {
 public:
  DeviceArray(std::vector<int64_t> shape, DType dtype, int device)
      : buffer_(std::make_shared<Buffer>(numel(shape) * itemsize(dtype), device)), shape_(std::move(shape)),
        dtype_(dtype) {}

  static DeviceArray from_numpy(const py::array& a, int device) {
    DType dtype;
    if (a.dtype().is(py::dtype::of<float>()))
      dtype = DType::kFloat32;
    else if (a.dtype().kind() == 'f' && a.itemsize() == 2)
      dtype = DType::kFloat16;
    else
      throw py::type_error("DeviceArray holds float32 or float16; got " + std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style)) throw py::value_error("DeviceArray.from_numpy needs a C-contiguous array");
    DeviceArray d(std::vector<int64_t>(a.shape(), a.shape() + a.ndim()), dtype, device);
    check(cudaMemcpy(d.data(), a.data(), a.nbytes(), cudaMemcpyHostToDevice), "copying to the device");
    return d;
  }

  py::array numpy() const {
    py::array out(py::dtype(dtype_ == DType::kFloat32 ? "float32" : "float16"), shape_);
    if (stream_) check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream_)), "waiting for the producer");
    check(cudaMemcpy(out.mutable_data(), data(), nbytes(), cudaMemcpyDeviceToHost), "copying to the host");
    return out;
  }

  py::dict cuda_array_interface() const {
    py::dict d;
    d["shape"] = py::tuple(py::cast(shape_));
    d["typestr"] = typestr_of(dtype_);
    d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(data()), false);
    d["strides"] = py::none();
    d["version"] = 3;
    // Protocol v3: 1 denotes the legacy default stream, which handle 0 means.
    d["stream"] = stream_ ? py::int_(stream_) : py::int_(1);
    return d;
  }

  // Accepts the protocol's keywords (stream, max_version, dl_device, copy) and
  // returns an unversioned capsule, which the protocol lets any consumer take.
  py::capsule dlpack(const py::kwargs& kwargs) {
    // Stream -1 means the consumer orders the work itself; for any other
    // stream, finish our writes so its reads see them.
    const bool consumer_syncs = kwargs.contains("stream") && !kwargs["stream"].is_none() &&
                                py::cast<int64_t>(kwargs["stream"]) == -1;
    if (!consumer_syncs)
      check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream_)), "waiting for the producer");
    struct Holder {
      std::shared_ptr<Buffer> buffer;
      std::vector<int64_t> shape;
      DLManagedTensor managed{};
    };
    auto* holder = new Holder{buffer_, shape_, {}};
    DLTensor& t = holder->managed.dl_tensor;
    t.data = data();
    t.device = {kDLCUDA, buffer_->device};
    t.ndim = static_cast<int32_t>(shape_.size());
    t.dtype = {static_cast<uint8_t>(kDLFloat), static_cast<uint8_t>(8 * itemsize(dtype_)), 1};
    t.shape = holder->shape.data();
    t.strides = nullptr;
    t.byte_offset = 0;
    holder->managed.manager_ctx = holder;
    holder->managed.deleter = [](DLManagedTensor* self) { delete static_cast<Holder*>(self->manager_ctx); };
    return py::capsule(&holder->managed, "dltensor", [](PyObject* capsule) {
      // A consumer renames the capsule to "used_dltensor" and takes ownership.
      if (PyCapsule_IsValid(capsule, "dltensor")) {
        auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
        m->deleter(m);
      }
    });
  }

  void* data() const { return buffer_->ptr; }
  size_t nbytes() const { return numel(shape_) * itemsize(dtype_); }
  int device() const { return buffer_->device; }
  const std::vector<int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  void set_stream(uintptr_t s) { stream_ = s; }

 private:
  std::shared_ptr<Buffer> buffer_;
  std::vector<int64_t> shape_;
  DType dtype_;
  uintptr_t stream_ = 0;
};

// An argument as ops.py describes it: (pointer, shape, typestr) of a
// C-contiguous device array.
using ArrayArg = std::tuple<uintptr_t, std::vector<int64_t>, std::string>;

py::object resize_conv1x1(const ArrayArg& x, const ArrayArg& weight, const std::optional<ArrayArg>& bias, int64_t ho,
                          int64_t wo, int order, uintptr_t stream, const std::optional<ArrayArg>& out) {
  const auto& [x_ptr, x_shape, x_type] = x;
  const auto& [w_ptr, w_shape, w_type] = weight;
  const DType dtype = parse_typestr(x_type, "x");
  if (parse_typestr(w_type, "weight") != dtype)
    throw py::type_error("weight must have the same dtype as x (" + typestr_of(dtype) + "); got " + w_type);
  if (bias && parse_typestr(std::get<2>(*bias), "bias") != dtype)
    throw py::type_error("bias must have the same dtype as x (" + typestr_of(dtype) + ")");
  if (order < 0 || order > 2) throw py::value_error("order must be 0 (auto), 1 (resize first) or 2 (conv first)");
  const std::vector<int64_t>* bias_shape = bias ? &std::get<1>(*bias) : nullptr;
  const nvp::Problem p = nvp::make_problem(x_shape, w_shape, bias_shape, ho, wo);

  const int device = device_of(x_ptr, "x");
  if (device_of(w_ptr, "weight") != device) throw py::value_error("weight is on another CUDA device than x");
  if (bias && device_of(std::get<0>(*bias), "bias") != device)
    throw py::value_error("bias is on another CUDA device than x");

  std::optional<DeviceArray> result;
  uintptr_t y_ptr = 0;
  if (out) {
    const auto& [o_ptr, o_shape, o_type] = *out;
    if (parse_typestr(o_type, "out") != dtype) throw py::type_error("out must have the same dtype as x");
    if (o_shape != p.out_shape())
      throw py::value_error("out has shape " + nvp::detail::shape_str(o_shape) + " but the result is " +
                            nvp::detail::shape_str(p.out_shape()));
    if (device_of(o_ptr, "out") != device) throw py::value_error("out is on another CUDA device than x");
    y_ptr = o_ptr;
  } else {
    result.emplace(p.out_shape(), dtype, device);
    result->set_stream(stream);
    y_ptr = reinterpret_cast<uintptr_t>(result->data());
  }
  {
    py::gil_scoped_release release;
    DeviceGuard guard(device);
    nvp::cuda::resize_conv1x1(p, static_cast<nvp::Order>(order), dtype, reinterpret_cast<const void*>(x_ptr),
                              reinterpret_cast<const void*>(w_ptr),
                              bias ? reinterpret_cast<const void*>(std::get<0>(*bias)) : nullptr,
                              reinterpret_cast<void*>(y_ptr), reinterpret_cast<cudaStream_t>(stream));
  }
  if (result) return py::cast(std::move(*result));
  return py::none();
}

// (number of usable devices, reason when there are none).
std::pair<int, std::string> availability() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) return {0, cudaGetErrorString(status)};
  if (count == 0) return {0, "no CUDA device found"};
  return {count, ""};
}

void synchronize(int device) {
  DeviceGuard guard(device);
  check(cudaDeviceSynchronize(), "synchronising the device");
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "nvp CUDA kernels (use nvp_rt.ops)";
  py::class_<DeviceArray>(m, "DeviceArray", "A C-contiguous CUDA array owned by nvp")
      .def_static("from_numpy", &DeviceArray::from_numpy, py::arg("array"), py::arg("device") = 0)
      .def("numpy", &DeviceArray::numpy, "Copy to a host numpy array")
      .def_property_readonly("shape", [](const DeviceArray& a) { return py::tuple(py::cast(a.shape())); })
      .def_property_readonly("dtype",
                             [](const DeviceArray& a) { return a.dtype() == DType::kFloat32 ? "float32" : "float16"; })
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("data_ptr", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.data()); })
      .def_property_readonly("__cuda_array_interface__", &DeviceArray::cuda_array_interface)
      .def("__dlpack__", &DeviceArray::dlpack)
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(int(kDLCUDA), a.device()); });
  m.def("resize_conv1x1", &resize_conv1x1, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("ho"),
        py::arg("wo"), py::arg("order"), py::arg("stream"), py::arg("out"));
  m.def("availability", &availability);
  m.def("synchronize", &synchronize, py::arg("device") = 0);
}
