#!/usr/bin/env bash
# A CUDA 13.0 build environment from PyPI, for the candle integration (candle/): candle's CUDA backend
# compiles its own kernels with nvcc and links libcuda, libnvrtc, libcublas, libcublasLt and libcurand
# at build time. This installs nvcc with its headers and cudart from NVIDIA's wheels, and makes
# link-time stubs of those five libraries (every function cudarc binds, returning an error, under the
# real soname), so nothing of a GPU machine is needed to build. The binaries load the real libraries
# where they run (the driver's libcuda.so.1 and the CUDA 13 libraries on LD_LIBRARY_PATH).
#
#     eval "$(scripts/cuda-toolkit.sh)"      # prints the exports: PATH, CUDA_HOME, CUDA_COMPUTE_CAP
#
# CUDA 13.0 and not newer on purpose: candle loads its kernels as PTX, which the driver must JIT, and the
# H200 machine's driver (580, CUDA 13.0) takes PTX ISA up to 9.0, what nvcc 13.0 emits.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FLASHMLA_CUDA_TOOLKIT:-$HOME/.cache/flashmla/cuda13.0-toolkit}
packages=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
          nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96)
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
"$venv/bin/pip" install -q --disable-pip-version-check "${packages[@]}" >&2
nvcc=$(find "$venv" -path '*nvidia/cu13/bin/nvcc' | head -n 1)
[ -x "$nvcc" ] || { echo "cuda-toolkit: nvcc not found after pip install" >&2; exit 1; }
root=$(dirname "$(dirname "$nvcc")")

# The stubs export the names cudarc declares (the cudarc of candle/Cargo.lock), so they link whatever
# candle and flashmla call.
cudarc=$(cd candle && cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
packages = json.load(sys.stdin)["packages"]
print(next(p["manifest_path"] for p in packages if p["name"] == "cudarc").rsplit("/", 1)[0])')
stubs=$root/lib/stubs
mkdir -p "$stubs"
for spec in cuda:libcuda.so.1:driver nvrtc:libnvrtc.so.13:nvrtc cublas:libcublas.so.13:cublas \
            cublasLt:libcublasLt.so.13:cublaslt curand:libcurand.so.10:curand; do
  IFS=: read -r name soname module <<< "$spec"
  bindings=$cudarc/src/$module/sys/mod.rs
  [ -f "$bindings" ] || { echo "cuda-toolkit: no $bindings" >&2; exit 1; }
  # 999 is "unknown error" in each of these APIs: a stub called by mistake fails, it does not succeed.
  grep -o '^ *fn [A-Za-z_][A-Za-z0-9_]*(' "$bindings" | sed 's/^ *fn \(.*\)(/int \1(void) { return 999; }/' \
    | sort -u > "$stubs/$name.c"
  gcc -shared -fPIC -o "$stubs/lib$name.so" -Wl,-soname,"$soname" "$stubs/$name.c"
done
# candle's MoE kernels (a static library built by nvcc) call the CUDA runtime: link the real one.
ln -sf ../libcudart.so.13 "$stubs/libcudart.so"

echo "export PATH=\"$root/bin:\$PATH\""
echo "export CUDA_HOME=\"$root\""
# No GPU here to ask: candle's kernels are built for the H200 (compute capability 9.0).
echo "export CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
