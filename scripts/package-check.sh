#!/usr/bin/env bash
# What a user gets from crates.io: `cargo package` of flashmla-abi and flashmla (which also builds each
# package), then a new project that depends on the packaged `flashmla` alone, with the README's example
# (examples/decode.rs) as its main, built with only the stable toolchain visible: its own cargo and
# rustc, no rustup proxy on PATH (so no other toolchain can be reached, even by name). The library's
# dependency tree must contain neither clap nor the workspace's test and benchmark harness.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p flashmla -e normal,build --locked --prefix none)
if grep -q '^clap ' <<<"$tree"; then
  echo "package-check: the library depends on clap" >&2; exit 1
fi
if grep -q '^flashmla-harness ' <<<"$tree"; then
  echo "package-check: the library depends on flashmla-harness (harness/ is for the tests, benches and CLI)" >&2; exit 1
fi
# --no-verify: cargo's own verification of a multi-package set compiles flashmla against a temporary
# local registry under target/package and extracts that registry's crates into
# $CARGO_HOME/registry/src/-<hash of its path>/, which it never refreshes. Where the checkout's path
# repeats (a CI machine that keeps CARGO_HOME) it then compiles a stale flashmla-abi from an earlier
# run. Both packaged crates are built below from their unpacked sources instead, by path (nothing
# cached), with the stable toolchain alone: a stricter check than cargo's.
cargo package --locked --no-verify -p flashmla-abi -p flashmla
target_dir=$(cargo metadata --format-version 1 --no-deps --locked | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for crate in flashmla-abi flashmla; do tar xzf "$target_dir/package/$crate-$version.crate" -C "$work"; done
if [ -d "$work/flashmla-$version/kernels" ]; then
  echo "package-check: the package carries kernels/ (it needs only host/ptx)" >&2; exit 1
fi
mkdir -p "$work/user/src"
cp examples/decode.rs "$work/user/src/main.rs"
cat > "$work/user/Cargo.toml" <<EOF
[package]
name = "flashmla-user"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
flashmla = "$version"

# Stands in for crates.io, where these versions are not published yet.
[patch.crates-io]
flashmla = { path = "../flashmla-$version" }
flashmla-abi = { path = "../flashmla-abi-$version" }

[workspace]
EOF
stable=$(dirname "$(rustup which --toolchain stable cargo)")
# The packaged flashmla-abi on its own, with its own tests (what `cargo package` would have verified).
(cd "$work/flashmla-abi-$version" && env -u RUSTUP_TOOLCHAIN -u RUSTC -u CARGO \
   PATH="$stable:/usr/local/bin:/usr/bin:/bin" RUSTC="$stable/rustc" CARGO_TARGET_DIR="$work/target-abi" \
   "$stable/cargo" test --release --quiet)
(cd "$work/user" && env -u RUSTUP_TOOLCHAIN -u RUSTC -u CARGO -u FLASHMLA_BUILD_KERNELS -u FLASHMLA_PTX_DIR \
   PATH="$stable:/usr/local/bin:/usr/bin:/bin" RUSTC="$stable/rustc" CARGO_TARGET_DIR="$work/target" \
   "$stable/cargo" build --release)
# Without a GPU the example starts and stops with the driver error (exit 1); with one it decodes.
if "$work/target/release/flashmla-user" > "$work/run.log" 2>&1; then
  cat "$work/run.log"
else
  grep -q "^Error: no CUDA driver" "$work/run.log" || { cat "$work/run.log" >&2; exit 1; }
fi
echo "the packaged flashmla $version builds with $("$stable/rustc" --version) alone; the README example runs: $(head -n 1 "$work/run.log")"
