# shellcheck shell=bash
# The CUDA 13.0 toolchain for `--features gpu` (candle-core with cuda, cudnn, nccl), assembled from
# NVIDIA's PyPI wheels: no CUDA toolkit, no GPU and no root access needed on the build machine.
#
# usage (bash; source it, do not execute it):
#   source scripts/cuda-toolchain.sh [DIR]
#   CARGO_TARGET_DIR=target-cuda cargo build --release --locked --features gpu
# DIR defaults to $WF_CUDA_DIR, else $HOME/.cache/wf-cuda-13.0; an empty DIR counts as none (a script
# that sources this without arguments passes on its own, so such scripts should give one, "" if need
# be). The first call downloads about 1.2 GB of wheels into a virtual environment in DIR (2 GB once
# installed, a minute or two); later calls only export the variables (well under a second).
# PYTHON picks the interpreter (default python3). On failure it returns non-zero with one line on
# stderr saying why, and leaves the calling shell running.
#
# It exports:
#   CUDA_ROOT, CUDA_PATH, CUDA_HOME  DIR/root: bin/ (nvcc), nvvm/, include/ (CUDA, cuDNN, NCCL headers),
#                                    lib/ and lib64/ (the wheels' shared libraries, plus unversioned names
#                                    for -l), lib/stubs/ and lib64/stubs/ (libcuda.so, see below)
#   NVCC                             DIR/root/bin/nvcc; PATH gets DIR/root/bin in front (once)
#   CUDA_COMPUTE_CAP                 90 unless already set (H100 / H200: sm_90); candle's kernels are
#                                    compiled for it
#   CUDARC_CUDA_VERSION              13000, so cudarc does not look for a CUDA installation to ask
#
# Pinned: nvcc / nvrtc / runtime 13.0, cuBLAS 13.0, cuRAND 10.4, cuDNN 9.13, NCCL 2.27.
#
# Why 13.0 and not a newer CUDA: the GPU machines run NVIDIA driver 580, which is CUDA 13.0. candle
# ships its kernels as PTX, which the driver compiles when they are loaded, and a driver accepts PTX only
# up to the ISA version of its own CUDA release: nvcc 13.0 writes PTX ISA 9.0, newer nvcc writes a
# newer ISA that driver 580 rejects. (The libraries linked here are not the ones used at run time: the
# binary finds libcudart.so.13, libcudnn.so.9, ... in the GPU machine's PyTorch wheels.)
#
# libcuda.so (the driver API) comes with the driver, never in a wheel. For the link step a stub is
# generated: lib/stubs/libcuda.so (soname libcuda.so.1) exporting every cu* entry point that the
# locked cudarc (through candle-core) declares, each returning CUDA_ERROR_UNKNOWN. It is only linked
# against; no libcuda.so.1 file is made, so nothing loads it: at run time the machine's real driver
# library is loaded instead (scripts/run-on-gpu.sh). The cudarc sources are read from Cargo's
# registry; when they are not there, `cargo fetch --locked` is run in this repository first.

if [ -z "${BASH_VERSION:-}" ]; then
  echo "cuda-toolchain: needs bash (source it from a bash shell)" >&2
  return 2 2>/dev/null || exit 2
fi
if ! (return 0 2>/dev/null); then
  echo "cuda-toolchain: source this file (source ${BASH_SOURCE[0]}); executed, its exports are lost" >&2
  exit 2
fi

_wf_cuda_toolchain() {
  local repo dir py venv root stamp pins lock_fd=
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
  dir=${1:-${WF_CUDA_DIR:-$HOME/.cache/wf-cuda-13.0}}
  py=${PYTHON:-python3}
  venv=$dir/venv root=$dir/root stamp=$dir/root/.ready
  pins="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88
nvidia-cublas==13.0.0.19 nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.13.0.50 nvidia-nccl-cu13==2.27.7"

  if [ ! -f "$stamp" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$pins" ]; then
    mkdir -p "$dir" || { echo "cuda-toolchain: cannot create $dir" >&2; return 1; }
    # One setup at a time per DIR (two builds may source this at once); released on return.
    if command -v flock >/dev/null; then
      exec {lock_fd}>"$dir/.lock" && flock "$lock_fd"
    fi
    local rc=0
    _wf_cuda_install "$repo" "$dir" "$py" "$venv" "$root" "$stamp" "$pins" || rc=$?
    if [ -n "$lock_fd" ]; then exec {lock_fd}>&-; fi
    [ $rc -eq 0 ] || return $rc
  fi

  export CUDA_ROOT=$root CUDA_PATH=$root CUDA_HOME=$root NVCC=$root/bin/nvcc
  case ":$PATH:" in *":$root/bin:"*) ;; *) export PATH=$root/bin:$PATH ;; esac
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  export CUDARC_CUDA_VERSION=13000
  echo "cuda-toolchain: CUDA 13.0 ready at $root (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
}

# Installs the wheels and lays out DIR/root; the stamp file is written last, so an interrupted
# setup is redone by the next call.
_wf_cuda_install() {
  local repo=$1 dir=$2 py=$3 venv=$4 root=$5 stamp=$6 pins=$7
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && return 0   # done while we waited for the lock

  command -v "$py" >/dev/null || { echo "cuda-toolchain: $py not found (set PYTHON to a Python 3 interpreter)" >&2; return 1; }
  if [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    "$py" -m venv "$venv" >"$dir/venv.log" 2>&1 \
      || { echo "cuda-toolchain: '$py -m venv' failed (python3-venv missing?); log: $dir/venv.log" >&2; return 1; }
  fi
  echo "cuda-toolchain: installing the CUDA 13.0 wheels into $venv (about 1.2 GB to download)" >&2
  # shellcheck disable=SC2086  # $pins is a list of requirements
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps $pins \
      >"$dir/pip.log" 2>&1; then
    echo "cuda-toolchain: pip could not install the wheels ($(grep -m1 -E '^ERROR' "$dir/pip.log" || tail -n1 "$dir/pip.log")); log: $dir/pip.log" >&2
    return 1
  fi
  local nv
  nv=$("$venv/bin/python" -c 'import nvidia; print(list(nvidia.__path__)[0])') \
    || { echo "cuda-toolchain: the wheels installed but 'import nvidia' fails in $venv" >&2; return 1; }
  local d
  for d in cu13/bin cu13/nvvm cu13/include cu13/lib cudnn/include cudnn/lib nccl/include nccl/lib; do
    [ -d "$nv/$d" ] || { echo "cuda-toolchain: $nv/$d missing after pip install (wheel layout changed?)" >&2; return 1; }
  done

  # The cudarc that Cargo.lock pins (a dependency of candle-core), for the driver's symbol list.
  local ver src
  ver=$(awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$repo/Cargo.lock")
  [ -n "$ver" ] || { echo "cuda-toolchain: no cudarc in $repo/Cargo.lock" >&2; return 1; }
  _wf_cudarc_src() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$ver" 2>/dev/null | head -n1; }
  src=$(_wf_cudarc_src)
  if [ -z "$src" ]; then
    echo "cuda-toolchain: cudarc $ver not in Cargo's registry; running 'cargo fetch --locked' in $repo" >&2
    (cd "$repo" && cargo fetch --locked >"$dir/cargo-fetch.log" 2>&1)
    src=$(_wf_cudarc_src)
  fi
  unset -f _wf_cudarc_src
  if [ -z "$src" ] || [ ! -d "$src/src/driver/sys" ]; then
    echo "cuda-toolchain: cudarc $ver sources not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src even after 'cargo fetch --locked' (log: $dir/cargo-fetch.log)" >&2
    return 1
  fi

  # DIR/root, built beside and swapped in whole.
  local new=$root.new f base
  rm -rf "$new" && mkdir -p "$new/include" "$new/lib/stubs" || return 1
  ln -s "$nv/cu13/bin" "$new/bin" && ln -s "$nv/cu13/nvvm" "$new/nvvm" && ln -s lib "$new/lib64" || return 1
  for d in cu13 cudnn nccl; do
    for f in "$nv/$d/include"/*; do ln -sfn "$f" "$new/include/$(basename "$f")"; done
    for f in "$nv/$d/lib"/*.so*; do ln -sfn "$f" "$new/lib/$(basename "$f")"; done
  done
  # Unversioned names for the linker's -lNAME.
  for base in cudart cublas cublasLt curand nvrtc cudnn nccl; do
    f=$(cd "$new/lib" && ls "lib$base.so".* 2>/dev/null | grep -v -e alt -e builtins | sort -V | head -n1)
    [ -n "$f" ] || { echo "cuda-toolchain: lib$base.so.* not in the wheels" >&2; return 1; }
    [ -e "$new/lib/lib$base.so" ] || ln -s "$f" "$new/lib/lib$base.so"
  done
  local c
  for c in cuda.h cudnn.h nccl.h; do
    [ -f "$new/include/$c" ] || { echo "cuda-toolchain: $c not in the wheels" >&2; return 1; }
  done

  # The link-time libcuda stub: one function per cu* name cudarc's driver bindings declare.
  grep -rhoE '\bfn cu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$src/src/driver/sys" \
    | sed -E 's/^fn //; s/[[:space:]]*\($//' | sort -u \
    | awk 'BEGIN { print "/* generated by scripts/cuda-toolchain.sh: link-time stand-in for the driver */" }
           { print "int " $1 "(void) { return 999; }" }' >"$new/lib/stubs/cuda_stub.c"
  local n
  n=$(grep -c '^int cu' "$new/lib/stubs/cuda_stub.c")
  [ "$n" -gt 100 ] || { echo "cuda-toolchain: only $n driver symbols found in $src/src/driver/sys" >&2; return 1; }
  command -v gcc >/dev/null || { echo "cuda-toolchain: gcc not found (needed for the libcuda stub and by nvcc)" >&2; return 1; }
  gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$new/lib/stubs/libcuda.so" "$new/lib/stubs/cuda_stub.c" \
    || { echo "cuda-toolchain: gcc could not build the libcuda stub" >&2; return 1; }
  "$new/bin/nvcc" --version >/dev/null || { echo "cuda-toolchain: $new/bin/nvcc does not run" >&2; return 1; }

  printf '%s' "$pins" >"$new/.ready"
  rm -rf "$root" && mv "$new" "$root"
}

if _wf_cuda_toolchain "$@"; then
  unset -f _wf_cuda_toolchain _wf_cuda_install
else
  unset -f _wf_cuda_toolchain _wf_cuda_install
  return 1
fi
