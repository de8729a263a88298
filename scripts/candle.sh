#!/usr/bin/env bash
# Builds and checks the candle integration (candle/, its own workspace: candle's CUDA backend needs nvcc,
# which scripts/cuda-toolkit.sh installs from PyPI, and links the CUDA libraries at build time).
#
#     scripts/candle.sh                 rustfmt, clippy -D warnings, and the tests, doc tests and example
#                                       built (and linked); they run only where an NVIDIA driver is
#                                       installed (candle links libcuda), see target/gpu-suite/run.sh
#     scripts/candle.sh --bundle DIR    release builds of the GPU test and the example into DIR/tests and
#                                       DIR/examples (scripts/gpu-suite.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
# Not `eval "$(...)"`: that discards the script's exit status, so a failed install went on unnoticed.
toolkit_env=$(scripts/cuda-toolkit.sh)
eval "$toolkit_env"
cd candle
executables() { grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/'; }
case "${1:-}" in
  --bundle)
    dir=$2
    mkdir -p "$dir/tests" "$dir/examples"
    cargo test --release --locked --no-run --message-format=json-render-diagnostics | executables | grep /deps/ \
      | while read -r exe; do cp "$exe" "$dir/tests/candle-$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')"; done
    cargo build --release --locked --examples --message-format=json-render-diagnostics | executables \
      | while read -r exe; do cp "$exe" "$dir/examples/candle-$(basename "$exe")"; done
    ;;
  "")
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings
    cargo test --locked --no-run
    cargo build --locked --examples
    # Doc tests are `no_run`: compiled and linked, not run.
    cargo test --locked --doc
    ;;
  *) echo "usage: scripts/candle.sh [--bundle DIR]" >&2; exit 2 ;;
esac
