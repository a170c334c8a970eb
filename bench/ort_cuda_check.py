"""Does ONNX Runtime run graphs on CUDA here? One Resize + Conv graph on the CUDA provider against the CPU's.

ONNX Runtime lists CUDAExecutionProvider whenever the package was built with it, and falls back to the
CPU, with only a logged error, when the provider's libraries (CUDA, cuDNN) do not load. So this runs a
graph and checks the provider the session actually kept, and the result against the CPU's.

    python bench/ort_cuda_check.py [RESULT.json]      # exit 1 with a one-line reason where CUDA is not used
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def resize_conv_graph(rng: np.random.Generator) -> bytes:
    w = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="linear"),
            helper.make_node("Conv", ["r", "w"], ["y"]),
        ],
        "check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 24, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([2, 8, 56, 56], np.int64), "sizes"), numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()


def check() -> dict:
    report: dict = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    if "CUDAExecutionProvider" not in report["available"]:
        report["error"] = f"this onnxruntime ({ort.__file__}) is a CPU build: no CUDAExecutionProvider"
        return report
    rng = np.random.default_rng()
    model, x = resize_conv_graph(rng), rng.standard_normal((2, 8, 24, 40)).astype(np.float32)
    cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    started = time.perf_counter()
    session = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    report["session_seconds"] = time.perf_counter() - started
    report["used"] = session.get_providers()
    if report["used"][0] != "CUDAExecutionProvider":
        report["error"] = "the CUDA provider did not load (CUDA or cuDNN libraries not found: see LD_LIBRARY_PATH)"
        return report
    y = session.run(None, {"x": x})[0]
    report["max_rel_err_vs_cpu"] = float(np.abs(y - cpu).max() / np.abs(cpu).max())
    if not report["max_rel_err_vs_cpu"] < 1e-3:  # TF32 convolutions land near 3e-4
        report["error"] = f"CUDA and CPU disagree (relative error {report['max_rel_err_vs_cpu']:.1e})"
    return report


def main() -> int:
    try:
        report = check()
    except Exception as e:  # an ORT that cannot even build the session: say so in one line
        report = {"onnxruntime": ort.__version__, "error": str(e).strip().splitlines()[0] if str(e) else repr(e)}
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f, indent=1)
    print("ort_cuda_check:", json.dumps(report))
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
