#!/usr/bin/env bash
# The carried PTX (host/ptx/*.ptx, embedded by default builds, so users need no nightly) and its record,
# host/ptx/FINGERPRINT. Needs the nightly pinned in kernels/rust-toolchain.toml.
#
#   scripts/update-ptx.sh                  after a kernel change: rebuild kernels/, carry the PTX, rewrite
#                                          the hash lines of FINGERPRINT, print the hashes
#   scripts/update-ptx.sh --check          CI: the carried PTX is byte-identical to what kernels/ builds,
#                                          FINGERPRINT's hash lines are current, and a GPU-suite run is
#                                          recorded for exactly these modules
#   scripts/update-ptx.sh --record 'LINE'  add the `validated ...` line that target/gpu-suite/run.sh
#                                          printed after a clean run of the GPU suite
set -euo pipefail
cd "$(dirname "$0")/.."
dir=host/ptx
fingerprint=$dir/FINGERPRINT
modules=(flashmla_sm90a flashmla_sm80)

die() { echo "update-ptx: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
# The key a GPU-suite record must start with for the carried modules.
record_key() { echo "validated sm90a=$(sha "$dir/flashmla_sm90a.ptx" | cut -c1-16) sm80=$(sha "$dir/flashmla_sm80.ptx" | cut -c1-16)"; }
# A record of a run that checked something and skipped nothing (run.sh prints one only then).
record_result='gpu-suite: [1-9][0-9]* passed, 0 failed, 0 skipped'
has_record() { grep -E "^$(record_key) +$record_result" "$fingerprint" >/dev/null 2>&1; }
no_record_help() {
  echo "  no GPU-suite run is recorded for these modules. Build the bundle (scripts/gpu-suite.sh), run it on"
  echo "  the GPU machine (FLASHMLA_REQUIRE_GPU=1 target/gpu-suite/run.sh); after a clean run it prints a"
  echo "  '$(record_key)  gpu-suite: ...' line: add it with scripts/update-ptx.sh --record '<that line>'"
}

# Builds kernels/ through build.rs (FLASHMLA_BUILD_KERNELS=1, the one place that knows how) and prints
# the build script's OUT_DIR, which holds both modules and FINGERPRINT.generated.
build() {
  local json out
  json=$(FLASHMLA_BUILD_KERNELS=1 cargo build -p flashmla --lib --locked --message-format=json-render-diagnostics) \
    || die "the kernel build failed (see above)"
  out=$(printf '%s\n' "$json" | grep '"reason":"build-script-executed"' | grep '#flashmla@' \
        | sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' | tail -n 1)
  [ -n "$out" ] && [ -f "$out/FINGERPRINT.generated" ] || die "the build left no FINGERPRINT.generated"
  echo "$out"
}

header() {
  cat <<'EOF'
# The PTX carried in host/ptx/ (embedded by default builds: users need no nightly) and what validated it.
# scripts/update-ptx.sh writes the `sources` line (SHA-256 of every kernel input) and one `sha256` line
# per module from a build of kernels/ with the pinned nightly. CI (scripts/update-ptx.sh --check)
# rebuilds them and requires the carried modules to be byte-identical, these lines to be current, and a
# `validated` line for exactly these modules: so a refactor that leaves the PTX unchanged lands without
# device time, and a PTX change cannot land without a GPU-suite run.
# `validated` lines, one per clean GPU-suite run (target/gpu-suite/run.sh prints it), are added with
# scripts/update-ptx.sh --record '<line>'; sm90a= and sm80= are the first 16 hex digits of each sha256.
EOF
}

case "${1:-}" in
  --record)
    line=${2:-}
    [[ "$line" == "$(record_key) "* ]] && grep -qE "^$(record_key) +$record_result" <<<"$line" \
      || die "a record must start with '$(record_key)' (the carried modules) and say 'gpu-suite: N passed, 0 failed, 0 skipped' with N > 0; got: $line"
    echo "$line" >> "$fingerprint"
    echo "recorded: $line"
    ;;
  --check)
    out=$(build)
    status=0
    for m in "${modules[@]}"; do
      if ! cmp -s "$out/$m.ptx" "$dir/$m.ptx"; then
        echo "update-ptx: $dir/$m.ptx is not what kernels/ compiles to (built: $(sha "$out/$m.ptx"), carried: $(sha "$dir/$m.ptx")): run scripts/update-ptx.sh" >&2
        status=1
      fi
    done
    if ! diff <(grep -E '^(sources|sha256) ' "$fingerprint") "$out/FINGERPRINT.generated" >/dev/null; then
      echo "update-ptx: $fingerprint does not hold the current hashes (kernel sources changed?): run scripts/update-ptx.sh" >&2
      diff <(grep -E '^(sources|sha256) ' "$fingerprint") "$out/FINGERPRINT.generated" >&2 || true
      status=1
    fi
    if [ "$status" -eq 0 ] && ! has_record; then
      echo "update-ptx: $(no_record_help)" >&2
      status=1
    fi
    [ "$status" -eq 0 ] || exit 1
    echo "carried PTX is what kernels/ builds; $(grep -cE "^$(record_key) " "$fingerprint") GPU-suite record(s):"
    grep -E "^$(record_key) " "$fingerprint" | sed 's/^/  /'
    ;;
  "")
    out=$(build)
    for m in "${modules[@]}"; do cp "$out/$m.ptx" "$dir/$m.ptx"; done
    records=$(grep -E '^validated ' "$fingerprint" 2>/dev/null || true)
    { header; cat "$out/FINGERPRINT.generated"; [ -z "$records" ] || printf '%s\n' "$records"; } > "$fingerprint.new"
    mv "$fingerprint.new" "$fingerprint"
    for m in "${modules[@]}"; do echo "$(sha "$dir/$m.ptx")  $dir/$m.ptx"; done
    if has_record; then
      echo "a GPU-suite run is recorded for these modules:"
      grep -E "^$(record_key) " "$fingerprint" | sed 's/^/  /'
    else
      no_record_help
    fi
    ;;
  *) die "usage: scripts/update-ptx.sh [--check | --record 'LINE']" ;;
esac
