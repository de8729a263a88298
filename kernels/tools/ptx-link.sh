#!/usr/bin/env bash
# Linker for nvptx64-nvidia-cuda: links rustc's bitcode objects into one module, keeps only the exported
# kernels (internalize + globaldce) and lowers the result to PTX with llc. Stands in for rustup's
# llvm-bitcode-linker, which is not distributed for this target. rustc runs it with the sysroot's
# llvm-tools bin directory on PATH.
set -euo pipefail
inputs=(); exports=(); cpu=""; features=""; out=""; opt_level=3
while [ $# -gt 0 ]; do
  case "$1" in
    --export-symbol) exports+=("$2"); shift 2 ;;
    --export-symbol=*) exports+=("${1#*=}"); shift ;;
    --target-cpu) cpu="$2"; shift 2 ;;
    --target-cpu=*) cpu="${1#*=}"; shift ;;
    --target-feature) features="$2"; shift 2 ;;
    --target-feature=*) features="${1#*=}"; shift ;;
    -o) out="$2"; shift 2 ;;
    -O*) opt_level="${1#-O}"; shift ;;
    -L|--target) shift 2 ;;
    -L*|--target=*|--debug|--lto) shift ;;
    -*) echo "ptx-link: ignoring flag $1" >&2; shift ;;
    *) inputs+=("$1"); shift ;;
  esac
done
[ -n "$out" ] || { echo "ptx-link: missing -o" >&2; exit 1; }
for tool in llvm-link opt llc; do
  command -v "$tool" >/dev/null || {
    # The nightly is named in one place, kernels/rust-toolchain.toml (as build.rs reads it).
    toolchain=$(sed -n 's/^[[:space:]]*channel[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
      "$(dirname "$0")/../rust-toolchain.toml")
    echo "ptx-link: $tool not found; run: rustup component add llvm-tools --toolchain ${toolchain:-<the channel of kernels/rust-toolchain.toml>}" >&2
    exit 1
  }
done
stem="${out%.*}"
printf '%s\n' "${exports[@]}" > "$stem.exports.txt"
llvm-link --ignore-non-bitcode "${inputs[@]}" -o "$stem.linked.bc"
opt "$stem.linked.bc" -o "$stem.opt.bc" --strip-debug \
  "--internalize-public-api-file=$stem.exports.txt" \
  "--passes=default<O${opt_level}>,internalize,globaldce"
llc_args=(-O3)
[ -n "$cpu" ] && llc_args+=(--mcpu "$cpu")
[ -n "$features" ] && llc_args+=("--mattr=$features")
llc "${llc_args[@]}" "$stem.opt.bc" -o "$out"
