#!/usr/bin/env bash
# The project's one GPU check, for a lent GPU machine (torch 2.11 + CUDA 13, nvcc, CuPy; ONNX Runtime
# CPU only, no PyAV, no network). Issue 25's figures in one run of at most 8 minutes:
#   setup    the carried wheels (bench/gpu_carry.sh: onnxruntime-gpu, PyAV, ...) on the path; nvp built
#            with its CUDA kernels (sm_90), skipped when this tree's build is already installed; whether
#            ONNX Runtime runs graphs on CUDA (bench/ort_cuda_check.py)
#   kernel   fused resize + 1x1 vs torch's two ops, fp32/fp16, share of a copy of the same bytes (720p)
#   session  Session(device="cuda") at 720p: cls frames/s, cls+det+act against the three alone
#   h264     NVP against H.264 decoded by NVDEC (else by the CPU), classification of a random frame
#   fit      fit frames/s at batch 1/8 and bf16; the fastest from scratch to 33 dB (at most 120 s)
#   compile  torch.compile (CUDA graphs) of the batch-8 bf16 fit against the same fit eager
#   clips    1 and 4 fits sharing the GPU (as Ray tasks with num_gpus=0.25 would)
#   tests    on request only (--parts tests, 3 minutes): pytest -m cuda, the kernel's and the Session's
#            CUDA tests (the session part compares every task's logits with a CPU Session's meanwhile)
# Each part runs in its own process under its own time limit and writes $OUT/<part>.json; one failing
# or timing out leaves the others. The last lines are a table of the figures against the issue's
# targets; $OUT also gets gpu_check.log (everything). Files back from $OUT are limited to 8: setup.json,
# the 6 parts' JSON and the log (the tests' outcome goes into setup.json; the table is the log's end,
# and `python bench/gpu_check.py summary --out DIR` prints it again from the JSON).
#
#   bash bench/gpu_check.sh                 everything (the device call; see bench/gpu_carry.sh plan)
#   bash bench/gpu_check.sh --build-only    setup's build alone (the first carry call does it)
#   bash bench/gpu_check.sh --parts "kernel fit"   some parts only (a rerun on the warm machine)
#   bash bench/gpu_check.sh --cpu           a dry run here: tiny shapes on the CPU, no build, no tests
set -uo pipefail  # no -e: a part that fails must not stop the others
cd "$(dirname "$0")/.." || exit 2
root="$PWD"

cpu=0 build_only=0 parts="kernel session h264 fit compile clips"  # tests: on request (--parts tests)
while (($#)); do
  case "$1" in
    --cpu) cpu=1 ;;
    --build-only) build_only=1 ;;
    --parts) parts="$2" && shift ;;
    *) echo "gpu_check: error: unknown option $1 (--cpu, --build-only, --parts LIST)" >&2 && exit 2 ;;
  esac
  shift
done

out="${OUT:-bench/results/gpu}"
work="${NVP_GPU_WORK:-$root/.carry/work}" # scratch the parts share (the 720p video, its model store)
mkdir -p "$out" "$work"
log="$out/gpu_check.log"
# Seconds each part may take: 7.3 minutes for the default parts, which leaves setup inside 8.
declare -A budget=([kernel]=35 [session]=100 [h264]=45 [fit]=160 [compile]=50 [clips]=50 [tests]=180)

check() { # everything below, its output also into the log (a pipeline: the log is complete when it returns)
echo "== setup $(date -u +%FT%TZ)"
if [[ -f .carry/env.sh ]]; then
  # shellcheck source=/dev/null
  . .carry/env.sh # PYTHONPATH: the carried wheels; LD_LIBRARY_PATH: CUDA and cuDNN from torch's wheels
fi
export PYTHONUNBUFFERED=1
stamp_of_tree() { # what the build depends on, so an unchanged tree is not built twice on a warm machine
  find CMakeLists.txt pyproject.toml csrc python -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' \
    -o -name '*.cuh' -o -name '*.py' -o -name '*.txt' -o -name '*.toml' \) -print0 | sort -z | xargs -0 cat |
    sha256sum | cut -d' ' -f1
}
if ((cpu)); then
  export PYTHONPATH="$root/python:$root/export${PYTHONPATH:+:$PYTHONPATH}"
else
  stamp="$(stamp_of_tree)"
  if [[ "$(cat .carry/build.stamp 2>/dev/null)" == "$stamp" ]]; then
    echo "nvp's build of this tree is installed already"
  else
    echo "== build (NVP_CUDA=ON, sm_90 only: the lent chip's)"
    # --no-deps: the image has torch, numpy, onnx; the carried wheels the rest.
    if time NVP_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps \
      --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 .; then
      mkdir -p .carry && echo "$stamp" >.carry/build.stamp
    else
      echo "== build FAILED"
    fi
  fi
  python3 -c "import nvp_rt; print(nvp_rt.build_info())"
  ((build_only)) && exit 0
fi
python3 - "$out/setup.json" <<'EOF'
import json, subprocess, sys

import torch

report = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
try:
    import nvp_rt

    report["nvp"] = nvp_rt.build_info()
    report["nvp_cuda"] = nvp_rt.cuda_is_available()
except Exception as e:
    report["nvp_error"] = str(e).splitlines()[0]
check = subprocess.run([sys.executable, "bench/ort_cuda_check.py"], capture_output=True, text=True)
report["ort_cuda"] = json.loads(check.stdout.partition("ort_cuda_check: ")[2] or "{}")
try:
    import av

    report["pyav"] = av.__version__
except ImportError:
    report["pyav"] = None
with open(sys.argv[1], "w") as f:
    json.dump(report, f, indent=1, default=str)
print(json.dumps(report))
EOF

status=()
run_part() { # name, then the command; its time limit from $budget
  local name="$1" started=$SECONDS
  shift
  echo "== $name (at most ${budget[$name]} s) $(date -u +%T)"
  timeout --kill-after=5 "${budget[$name]}" "$@"
  local rc=$?
  ((rc == 124 || rc == 137)) && echo "== $name: out of time after ${budget[$name]} s"
  status+=("$name: rc $rc in $((SECONDS - started)) s")
}
flags=(--out "$out" --work "$work")
((cpu)) && flags+=(--cpu)
for part in $parts; do
  case "$part" in
    kernel | session | h264 | fit | compile | clips) run_part "$part" python3 bench/gpu_check.py "$part" "${flags[@]}" ;;
    tests)
      if ((cpu)); then continue; fi
      # Crash-isolated (xdist workers): a test that kills the interpreter fails alone. The outcome is
      # added to setup.json, so $OUT stays within its 8 files.
      run_part tests python3 -m pytest -q -n 4 -rf -m cuda tests/test_ops_cuda.py tests/test_session.py \
        -p no:cacheprovider --junitxml="$work/tests.xml"
      python3 - "$out/setup.json" "$work/tests.xml" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET

report = json.load(open(sys.argv[1]))
try:
    root = ET.parse(sys.argv[2]).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    report["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError) as e:
    report["tests"] = {"error": str(e)}
json.dump(report, open(sys.argv[1], "w"), indent=1)
EOF
      ;;
    *) echo "gpu_check: unknown part $part" ;;
  esac
done
echo "== parts"
printf '  %s\n' "${status[@]}"
echo "== summary"
python3 bench/gpu_check.py summary --out "$out"
}
check 2>&1 | tee -a "$log"
