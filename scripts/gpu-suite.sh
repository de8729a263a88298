#!/usr/bin/env bash
# Builds every test, example and bench binary (release, PTX embedded) into one folder, target/gpu-suite/,
# with a runner, so the whole GPU suite runs on a machine that has a GPU and no Rust:
#
#     scripts/gpu-suite.sh                 # here: build (also the candle integration: see --no-candle)
#                                          # into target/gpu-suite/ and target/gpu-suite.tar.gz (to send)
#     gpu-suite/run.sh                     # there: run it; prints "gpu-suite: N passed, N failed, N skipped"
#     gpu-suite/run.sh --bench             # there: also run the criterion benches
#     gpu-suite/run.sh --sanitize          # there: also run compute-sanitizer's memcheck, synccheck,
#                                          # racecheck and initcheck on the corner cases
#
# scripts/gpu-suite.sh --no-candle leaves out the candle integration (which needs scripts/cuda-toolkit.sh's
# CUDA 13.0 toolkit from PyPI and a ~10 min build of candle's kernels).
#
# The binaries need glibc >= 2.34 and the NVIDIA driver's libcuda.so.1 on the library path; the candle
# ones also the CUDA 13 libraries libcudart.so.13, libnvrtc.so.13, libcublas.so.13, libcublasLt.so.13 and
# libcurand.so.10 (e.g. /usr/local/cuda/lib64 on LD_LIBRARY_PATH).
#
# The bundle is built in a fresh folder and replaces target/gpu-suite/ only when everything built, so a
# compile error (shown, not hidden) leaves the previous bundle in place.
set -euo pipefail
cd "$(dirname "$0")/.."
candle=1
for arg in "$@"; do
  case "$arg" in
    --no-candle) candle=0 ;;
    *) echo "usage: scripts/gpu-suite.sh [--no-candle]" >&2; exit 2 ;;
  esac
done
out=target/gpu-suite
mkdir -p target
stage=$(mktemp -d target/gpu-suite.new.XXXXXX)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/tests" "$stage/benches" "$stage/bin" "$stage/examples"

# JSON on stdout, compiler messages rendered on stderr: errors stay visible and, with pipefail, fatal.
executables() { grep -o '"executable":"[^"]*/deps/[^"]*"' | sed 's/"executable":"\(.*\)"/\1/'; }
copy_stripped() { # path dest_dir
  local name; name=$(basename "$1" | sed 's/-[0-9a-f]\{16\}$//')
  # The library's and the CLI's unit tests (flashmla-harness's `flashmla` binary) are both called
  # `flashmla`: keep both.
  [ -e "$2/$name" ] && name="$name-$(basename "$1" | sed 's/.*-//')"
  cp "$1" "$2/$name"
  strip "$2/$name" 2>/dev/null || true
}

target_dir=$(cargo metadata --format-version 1 --no-deps --locked | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
cargo build --release --locked -p flashmla-harness --bin flashmla
cargo build --release --locked -p flashmla --examples
copy_stripped "$target_dir/release/flashmla" "$stage/bin"
copy_stripped "$target_dir/release/examples/decode" "$stage/examples"
cargo test --release --locked --workspace --no-run --message-format=json-render-diagnostics | executables \
  | while read -r exe; do copy_stripped "$exe" "$stage/tests"; done
cargo bench --locked -p flashmla-harness --no-run --message-format=json-render-diagnostics | executables \
  | while read -r exe; do copy_stripped "$exe" "$stage/benches"; done
if [ "$candle" = 1 ]; then
  scripts/candle.sh --bundle "$PWD/$stage"
  for f in "$stage"/tests/candle-* "$stage"/examples/candle-*; do strip "$f" 2>/dev/null || true; done
fi
# The modules the binaries embed, for the record line run.sh prints after a clean run.
# (`info` lists them before it opens the device, so also where there is none: exit status 69.)
{ "$stage/bin/flashmla" info 2>/dev/null || true; } | sed -n 's/^ *embedded module \([a-z0-9_]*\) .*sha256 \([0-9a-f]*\)$/\1 \2/p' > "$stage/PTX_SHA256"
[ "$(wc -l < "$stage/PTX_SHA256")" -eq 2 ] || { echo "gpu-suite: cannot read the embedded modules' sha256" >&2; exit 1; }

cat > "$stage/run.sh" <<'RUNNER'
#!/usr/bin/env bash
# Runs every test binary of the GPU suite and the CLI and example smoke runs, and sums their results.
# Exit status: 0 only if nothing failed. Without a usable GPU every GPU check is skipped (never passed);
# FLASHMLA_REQUIRE_GPU=1 makes that a failure. --bench also runs the criterion benches; --sanitize also
# runs compute-sanitizer (memcheck, synccheck, racecheck, initcheck) on the corner cases, each one check.
# After a clean run (nothing failed or skipped) it prints the `validated` line to record for the PTX it
# ran: scripts/update-ptx.sh --record '<that line>' in the repository.
cd "$(dirname "$0")"
sanitize=0; bench=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    --bench) bench=1 ;;
    *) echo "usage: run.sh [--sanitize] [--bench]" >&2; exit 2 ;;
  esac
done
passed=0; failed=0; skipped=0
mkdir -p logs
# `flashmla info` exits 69 where there is no usable GPU (no driver, no device, older than sm_80).
bin/flashmla info > logs/info.log 2>&1
info_rc=$?
gpu=1
if [ "$info_rc" -eq 69 ]; then
  gpu=0
  echo "no usable GPU: $(tail -n 1 logs/info.log)"
fi
for t in tests/*; do
  name=$(basename "$t")
  echo "=== $name"
  if [ "$gpu" = 0 ] && [ "${name#candle-}" != "$name" ] && [ "${FLASHMLA_REQUIRE_GPU:-}" != 1 ]; then
    # candle links libcuda: its binaries cannot start without a driver.
    echo "SKIP $name: skipped: no usable GPU (candle's binaries link libcuda)"; skipped=$((skipped + 1)); continue
  fi
  "$t" 2>&1 | tee "logs/$name.log"
  rc=${PIPESTATUS[0]}
  counted=0
  while read -r p f s; do
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s)); counted=1
  done < <(sed -n -e 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' \
                  -e 's/^[A-Za-z_-]*: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' "logs/$name.log")
  if [ "$rc" -ne 0 ] && { [ "$counted" -eq 0 ] || ! grep -qE '([1-9][0-9]*) failed' "logs/$name.log"; }; then
    echo "$name exited with status $rc"; failed=$((failed + 1))
  fi
done
smoke() { # name command...: a run that needs the GPU, counted as one pass, failure or skip
  local name=$1; shift
  echo "=== $name"
  if [ "$gpu" = 0 ]; then
    if [ "${FLASHMLA_REQUIRE_GPU:-}" = 1 ]; then
      echo "$name: no usable GPU, and FLASHMLA_REQUIRE_GPU=1"; failed=$((failed + 1))
    else
      echo "SKIP $name: skipped: no usable GPU"; skipped=$((skipped + 1))
    fi
    return
  fi
  if "$@"; then passed=$((passed + 1)); else echo "$name failed"; failed=$((failed + 1)); fi
}
smoke "flashmla info" bash -c "cat logs/info.log; exit $info_rc"
smoke "flashmla bench (one small shape)" bin/flashmla bench --one --b 4 --s-q 2 --s-k 300 --h-q 16 --iters 3
smoke "flashmla bench --step (ThunderMLA's skewed batch, decode step eager and from a graph)" bin/flashmla bench --b 4 --step --iters 3
smoke "flashmla check (corner cases)" bin/flashmla check --suite corner
for e in examples/*; do smoke "example $(basename "$e")" "$e"; done
if [ "$sanitize" = 1 ]; then
  for tool in memcheck synccheck racecheck initcheck; do
    smoke "compute-sanitizer --tool $tool (check --suite corner)" \
      compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 bin/flashmla check --suite corner --seed 1
  done
fi
if [ "$bench" = 1 ]; then
  for b in benches/*; do echo "=== bench $(basename "$b")"; "$b" --bench || failed=$((failed + 1)); done
fi
if [ "$failed" -eq 0 ] && [ "$skipped" -eq 0 ] && [ "$gpu" = 1 ]; then
  device=$(sed -n 's/^device [0-9]* *\(.*\) (compute capability.*/\1/p' logs/info.log | head -n 1)
  sm90a=$(awk '$1 == "flashmla_sm90a" {print substr($2, 1, 16)}' PTX_SHA256)
  sm80=$(awk '$1 == "flashmla_sm80" {print substr($2, 1, 16)}' PTX_SHA256)
  echo "record for host/ptx/FINGERPRINT (scripts/update-ptx.sh --record '<the line below>'):"
  echo "validated sm90a=$sm90a sm80=$sm80  gpu-suite: $passed passed, 0 failed, 0 skipped · $device · $(date -u +%Y-%m-%d)"
fi
echo "gpu-suite: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
RUNNER
chmod +x "$stage/run.sh"
rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
# One file to send (the candle binaries carry candle's PTX, which compresses well).
tar czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
echo "built $out ($(du -sh "$out" | cut -f1)): $(ls "$out/tests" | wc -l) test binaries, $(ls "$out/examples" | wc -l) examples, $(ls "$out/benches" | wc -l) benches"
echo "send $out.tar.gz ($(du -h "$out.tar.gz" | cut -f1)); on the GPU machine: tar xzf gpu-suite.tar.gz && FLASHMLA_REQUIRE_GPU=1 gpu-suite/run.sh"
