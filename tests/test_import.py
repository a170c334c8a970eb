"""The runtime imports without torch and without a GPU."""

import subprocess
import sys


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


CPU_WORK = (
    "import sys, numpy as np, nvp_rt\n"
    "from nvp_rt import ops\n"
    "y = ops.resize_conv1x1(np.ones((1, 2, 3, 3), np.float32), np.ones((1, 2), np.float32), None, (4, 4))\n"
    "assert abs(float(y.mean()) - 2.0) < 1e-6, y.mean()\n"
    "available = nvp_rt.cuda_is_available()\n"
)


def test_import_and_cpu_op_never_import_torch():
    result = run_python(CPU_WORK + "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')\n")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_import_with_no_visible_gpu():
    """CUDA_VISIBLE_DEVICES='' hides every GPU: import and CPU work must not care."""
    code = "import os; os.environ['CUDA_VISIBLE_DEVICES'] = ''\n" + CPU_WORK + "assert not available\nprint('ok')\n"
    result = run_python(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_cuda_kernels_built_where_nvcc_was_found():
    """With nvcc on PATH the CUDA code must compile (NVP_CUDA=AUTO), so CI without a GPU still builds it."""
    import os
    import shutil

    import nvp_rt

    setting = os.environ.get("NVP_CUDA", "AUTO").upper()
    expected = setting == "ON" or (setting == "AUTO" and shutil.which("nvcc") is not None)
    assert nvp_rt.build_info()["cuda"] == expected, nvp_rt.build_info()
