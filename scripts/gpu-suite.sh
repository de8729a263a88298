#!/usr/bin/env bash
# Builds every test and bench binary (release, PTX embedded) into one folder, target/gpu-suite/, with a
# runner, so the whole GPU suite runs on a machine that has a GPU and no Rust:
#
#     scripts/gpu-suite.sh                 # here: build
#     target/gpu-suite/run.sh              # there: run the tests; prints "N passed, N failed, N skipped"
#     target/gpu-suite/run.sh --bench      # there: also run the criterion benches
#     target/gpu-suite/run.sh --sanitize   # there: also run compute-sanitizer's four tools on the corner cases
#
# The binaries need glibc >= 2.34 and the NVIDIA driver's libcuda.so.1 on the library path; nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-suite
rm -rf "$out"
mkdir -p "$out/tests" "$out/benches" "$out/bin"

executables() { grep -o '"executable":"[^"]*/deps/[^"]*"' | sed 's/"executable":"\(.*\)"/\1/'; }
copy_stripped() { # path dest_dir
  local name; name=$(basename "$1" | sed 's/-[0-9a-f]\{16\}$//')
  cp "$1" "$2/$name" && strip "$2/$name" 2>/dev/null || true
}

cargo build --release --bin flashmla
cp target/release/flashmla "$out/bin/" && strip "$out/bin/flashmla" 2>/dev/null || true
cargo test --release --workspace --no-run --message-format=json 2>/dev/null | executables | while read -r exe; do copy_stripped "$exe" "$out/tests"; done
cargo bench --no-run --message-format=json 2>/dev/null | executables | while read -r exe; do copy_stripped "$exe" "$out/benches"; done

cat > "$out/run.sh" <<'RUNNER'
#!/usr/bin/env bash
# Runs every test binary of the GPU suite and sums their results. Exit status: 0 only if nothing failed.
# FLASHMLA_REQUIRE_GPU=1 turns "no GPU" skips into failures. --bench also runs the criterion benches;
# --sanitize also runs compute-sanitizer (memcheck, synccheck, racecheck, initcheck) on the corner cases.
cd "$(dirname "$0")"
passed=0; failed=0; skipped=0
mkdir -p logs
for t in tests/*; do
  name=$(basename "$t")
  echo "=== $name"
  "$t" 2>&1 | tee "logs/$name.log"
  rc=${PIPESTATUS[0]}
  counted=0
  while read -r p f s; do
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s)); counted=1
  done < <(sed -n -e 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' \
                  -e 's/^[A-Za-z_]*: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' "logs/$name.log")
  if [ "$rc" -ne 0 ] && { [ "$counted" -eq 0 ] || ! grep -qE '([1-9][0-9]*) failed' "logs/$name.log"; }; then
    echo "$name exited with status $rc"; failed=$((failed + 1))
  fi
done
smoke() { # name command...: a CLI run counted as one pass or failure
  local name=$1; shift
  echo "=== $name"
  if "$@"; then passed=$((passed + 1)); else echo "$name failed"; failed=$((failed + 1)); fi
}
smoke "flashmla info" bin/flashmla info
smoke "flashmla bench (one small shape)" bin/flashmla bench --one --b 4 --s-q 2 --s-k 300 --h-q 16 --iters 3
smoke "flashmla check (corner cases)" bin/flashmla check --suite corner
if [ "${1:-}" = "--sanitize" ]; then
  # compute-sanitizer over the corner cases (both kernels' paths, split and unsplit, ragged tails, zero
  # lengths): each tool counts as one pass or failure.
  for tool in memcheck synccheck racecheck initcheck; do
    smoke "compute-sanitizer --tool $tool (check --suite corner)" \
      compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 bin/flashmla check --suite corner --seed 1
  done
fi
if [ "${1:-}" = "--bench" ]; then
  for b in benches/*; do echo "=== bench $(basename "$b")"; "$b" --bench || failed=$((failed + 1)); done
fi
echo "gpu-suite: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
RUNNER
chmod +x "$out/run.sh"
du -sh "$out"
echo "built $out: $(ls "$out/tests" | wc -l) test binaries, $(ls "$out/benches" | wc -l) benches; run $out/run.sh on the GPU machine"
