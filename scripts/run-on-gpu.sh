#!/usr/bin/env bash
# Runs a binary built with scripts/cuda-toolchain.sh (e.g. `wf` with --features gpu) on a GPU machine
# that has the NVIDIA driver and PyTorch's CUDA 13 pip wheels but no CUDA toolkit.
#
# usage: run-on-gpu.sh BINARY [ARGS...]
#
# The binary is linked against libcuda.so.1 (the driver API) and the CUDA libraries by soname:
# libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10, libnvrtc.so.13, libcudnn.so.9, libnccl.so.2.
# libcuda.so.1 comes from the driver's own install (the loader's default paths). The others are taken
# from the nvidia-* wheels PyTorch brought along: nvidia/cu13/lib, nvidia/cudnn/lib and nvidia/nccl/lib
# in every site-packages directory of $PYTHON (default python3), then /usr/local/cuda/lib64 if present,
# then the directories in WF_CUDA_LIB_DIRS (colon-separated), all put in front of LD_LIBRARY_PATH.
# Exit status: the binary's; 2 for a usage error; 3 when a shared library cannot be found (each one
# named on stderr), before the binary starts. Self-contained: it can be copied next to the binary.
set -uo pipefail

if [ $# -lt 1 ]; then
  echo "usage: run-on-gpu.sh BINARY [ARGS...]" >&2
  exit 2
fi
bin=$1
shift
[ -f "$bin" ] && [ -x "$bin" ] || { echo "run-on-gpu: $bin is not an executable file" >&2; exit 2; }
case $bin in */*) ;; *) bin=./$bin ;; esac

dirs=()
add() { [ -d "$1" ] && case ":$(IFS=:; echo "${dirs[*]:-}"):" in *":$1:"*) ;; *) dirs+=("$1") ;; esac; }
py=${PYTHON:-python3}
if command -v "$py" >/dev/null; then
  while IFS= read -r sp; do
    [ -n "$sp" ] || continue
    for sub in nvidia/cu13/lib nvidia/cudnn/lib nvidia/nccl/lib; do add "$sp/$sub"; done
  done < <("$py" -c 'import site, sys
paths = site.getsitepackages() + [site.getusersitepackages()] + sys.path
print("\n".join(dict.fromkeys(p for p in paths if p)))' 2>/dev/null)
fi
add /usr/local/cuda/lib64
IFS=: read -r -a extra <<<"${WF_CUDA_LIB_DIRS:-}"
for d in ${extra[@]+"${extra[@]}"}; do [ -n "$d" ] && add "$d"; done

if [ ${#dirs[@]} -gt 0 ]; then
  found=$(IFS=:; echo "${dirs[*]}")
  export LD_LIBRARY_PATH=$found${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

# ldd lists every library the loader would not find, the driver's libcuda.so.1 included.
missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ { print $1 }' | sort -u)
if [ -n "$missing" ]; then
  echo "run-on-gpu: $bin needs shared libraries that are not here: $(echo "$missing" | paste -sd ' ')" >&2
  echo "run-on-gpu: searched LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} and the loader's default paths (libcuda.so.1 comes with the NVIDIA driver; the others with PyTorch's nvidia-* CUDA 13 wheels for $py)" >&2
  exit 3
fi
exec "$bin" "$@"
