//! Provides flashmla's GPU kernels, one PTX module per target architecture, in `OUT_DIR` for
//! `host/ptx.rs` to embed, with each module's SHA-256.
//!
//! * default: the PTX carried in `host/ptx/`, so the crate builds with stable Rust alone. The carried
//!   files are what `kernels/` compiles to (`scripts/update-ptx.sh` writes them; CI rebuilds and compares
//!   them byte for byte, see `host/ptx/FINGERPRINT`).
//! * `FLASHMLA_PTX_DIR=/dir`: prebuilt modules (`/dir/flashmla_sm90a.ptx`, `/dir/flashmla_sm80.ptx`).
//! * `FLASHMLA_BUILD_KERNELS=1`: builds `kernels/` (`cargo build --release`, run by rustup with the
//!   nightly pinned in `kernels/rust-toolchain.toml`, which needs `rust-src` and `llvm-tools`) and
//!   embeds the result; `OUT_DIR/FINGERPRINT.generated` then holds the hash lines of the built modules
//!   and of the kernel sources, which `scripts/update-ptx.sh` copies into `host/ptx/FINGERPRINT`.
use sha2::{Digest, Sha256};
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// (module name, `-C target-cpu`, PTX ISA feature, value of `--cfg flashmla_arch`).
const MODULES: [(&str, &str, &str, &str); 2] = [
    ("flashmla_sm90a", "sm_90a", "+ptx83", "sm90a"),
    ("flashmla_sm80", "sm_80", "+ptx83", "sm80"),
];

/// What the kernel build reads, relative to `kernels/`: the inputs of the `sources` hash and of
/// `rerun-if-changed`.
const KERNEL_INPUTS: [&str; 8] = [
    "src",
    "abi/src",
    "abi/Cargo.toml",
    "Cargo.toml",
    "Cargo.lock",
    "rust-toolchain.toml",
    ".cargo/config.toml",
    "tools",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels = manifest_dir.join("kernels");
    let carried = manifest_dir.join("host/ptx");
    println!("cargo::rerun-if-env-changed=FLASHMLA_PTX_DIR");
    println!("cargo::rerun-if-env-changed=FLASHMLA_BUILD_KERNELS");
    println!(
        "cargo::rerun-if-changed={}",
        carried.join("FINGERPRINT").display()
    );

    let origin = if let Some(dir) = env::var_os("FLASHMLA_PTX_DIR") {
        copy_modules(&PathBuf::from(dir), &out_dir, "FLASHMLA_PTX_DIR is set but");
        "FLASHMLA_PTX_DIR".to_owned()
    } else if env::var("FLASHMLA_BUILD_KERNELS").is_ok_and(|v| v == "1") {
        if !kernels.join("src").is_dir() {
            fail(
                "FLASHMLA_BUILD_KERNELS=1 needs the kernel sources (kernels/), which only the git \
                 repository has: the published crate carries their PTX instead",
            );
        }
        let toolchain = build_kernels(&kernels, &out_dir);
        write_generated_fingerprint(&kernels, &out_dir);
        warn_if_carried_differs(&carried, &out_dir);
        format!("built from kernels/ with {toolchain}")
    } else {
        copy_modules(&carried, &out_dir, "the carried PTX is missing:");
        if kernels.join("src").is_dir() {
            warn_if_sources_changed(&kernels, &carried);
        }
        "carried (host/ptx)".to_owned()
    };
    println!("cargo::rustc-env=FLASHMLA_PTX_ORIGIN={origin}");
    for (name, ..) in MODULES {
        let bytes = fs::read(out_dir.join(format!("{name}.ptx")))
            .unwrap_or_else(|e| fail(&format!("reading {name}.ptx from OUT_DIR: {e}")));
        let var = name.to_uppercase();
        println!(
            "cargo::rustc-env={var}_SHA256={}",
            hex(&Sha256::digest(&bytes))
        );
    }
}

/// Copies both modules from `dir` into `OUT_DIR`.
fn copy_modules(dir: &Path, out_dir: &Path, context: &str) {
    for (name, ..) in MODULES {
        let src = dir.join(format!("{name}.ptx"));
        println!("cargo::rerun-if-changed={}", src.display());
        if let Err(e) = fs::copy(&src, out_dir.join(format!("{name}.ptx"))) {
            fail(&format!("{context} {} cannot be read: {e}", src.display()));
        }
    }
}

/// Builds both modules from `kernels/` with the pinned nightly; returns the toolchain's name.
fn build_kernels(kernels: &Path, out_dir: &Path) -> String {
    for path in KERNEL_INPUTS {
        println!("cargo::rerun-if-changed={}", kernels.join(path).display());
    }
    let toolchain = pinned_toolchain(kernels);
    check_toolchain(kernels, &toolchain);

    // The modules are independent builds (different target CPUs); run them side by side.
    let children: Vec<_> = MODULES
        .iter()
        .map(|&(name, cpu, ptx, cfg)| {
            let target_dir = out_dir.join(format!("kernels-{name}"));
            let mut cmd = kernel_cargo(kernels);
            cmd.args(["build", "--release", "--target-dir"])
                .arg(&target_dir);
            cmd.env("RUSTFLAGS", rustflags(cpu, ptx, cfg));
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| fail(&format!("cannot run cargo for kernels/: {e}")));
            (name, target_dir, child)
        })
        .collect();
    for (name, target_dir, child) in children {
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| fail(&format!("waiting for the kernel build: {e}")));
        if !output.status.success() {
            fail(&format!(
                "building the GPU kernels ({name}) with {toolchain} failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let ptx = target_dir.join("nvptx64-nvidia-cuda/release/flashmla_kernels.ptx");
        if let Err(e) = fs::copy(&ptx, out_dir.join(format!("{name}.ptx"))) {
            fail(&format!(
                "the kernel build produced no {}: {e}",
                ptx.display()
            ));
        }
    }
    toolchain
}

fn rustflags(cpu: &str, ptx: &str, cfg: &str) -> String {
    format!("-C target-cpu={cpu} -C target-feature={ptx} --cfg flashmla_arch=\"{cfg}\"")
}

/// SHA-256 over every kernel input (path, length and bytes of each file, in path order) and the
/// per-module compiler flags: what the PTX is a function of, given the pinned toolchain.
fn kernel_sources_sha256(kernels: &Path) -> String {
    let mut files = Vec::new();
    for input in KERNEL_INPUTS {
        collect_files(kernels, &kernels.join(input), &mut files);
    }
    files.sort();
    let mut hasher = Sha256::new();
    for (name, cpu, ptx, cfg) in MODULES {
        hasher.update(format!("{name}: {}\n", rustflags(cpu, ptx, cfg)));
    }
    for relative in files {
        let bytes = fs::read(kernels.join(&relative))
            .unwrap_or_else(|e| fail(&format!("reading kernels/{relative}: {e}")));
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    hex(&hasher.finalize())
}

/// Files under `path` (or `path` itself), as `/`-separated paths relative to `root`.
fn collect_files(root: &Path, path: &Path, out: &mut Vec<String>) {
    if path.is_dir() {
        let entries = fs::read_dir(path)
            .unwrap_or_else(|e| fail(&format!("listing {}: {e}", path.display())));
        for entry in entries.flatten() {
            collect_files(root, &entry.path(), out);
        }
    } else if path.is_file() {
        let relative = path.strip_prefix(root).unwrap_or(path);
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        out.push(parts.join("/"));
    }
}

/// The hash lines of `host/ptx/FINGERPRINT` for what this build produced.
fn write_generated_fingerprint(kernels: &Path, out_dir: &Path) {
    let mut text = format!("sources {}  kernels/\n", kernel_sources_sha256(kernels));
    for (name, ..) in MODULES {
        let bytes = fs::read(out_dir.join(format!("{name}.ptx")))
            .unwrap_or_else(|e| fail(&format!("reading the built {name}.ptx: {e}")));
        text += &format!("sha256 {}  {name}.ptx\n", hex(&Sha256::digest(&bytes)));
    }
    fs::write(out_dir.join("FINGERPRINT.generated"), text)
        .unwrap_or_else(|e| fail(&format!("writing OUT_DIR/FINGERPRINT.generated: {e}")));
}

fn warn_if_carried_differs(carried: &Path, out_dir: &Path) {
    for (name, ..) in MODULES {
        let file = format!("{name}.ptx");
        if fs::read(carried.join(&file)).ok() != fs::read(out_dir.join(&file)).ok() {
            println!(
                "cargo::warning=host/ptx/{file} differs from what kernels/ compiles to (embedded: \
                 the freshly built module); run scripts/update-ptx.sh to carry it"
            );
        }
    }
}

/// A checkout whose kernel sources changed since `host/ptx` was generated would silently embed
/// the old PTX: say so.
fn warn_if_sources_changed(kernels: &Path, carried: &Path) {
    for path in KERNEL_INPUTS {
        println!("cargo::rerun-if-changed={}", kernels.join(path).display());
    }
    let recorded = fs::read_to_string(carried.join("FINGERPRINT")).unwrap_or_default();
    let recorded = recorded
        .lines()
        .find_map(|l| l.strip_prefix("sources "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("");
    if recorded != kernel_sources_sha256(kernels) {
        println!(
            "cargo::warning=kernels/ changed since host/ptx was generated: this build embeds the \
             carried (older) PTX. Run scripts/update-ptx.sh, or build with FLASHMLA_BUILD_KERNELS=1"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `cargo` for the device crate: the environment the outer (host) cargo set is removed, or the inner
/// build would silently use the outer toolchain, target and flags.
fn kernel_cargo(kernels: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(kernels);
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let scrub = (key.starts_with("CARGO") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || matches!(
                &*key,
                "RUSTUP_TOOLCHAIN"
                    | "RUSTFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if scrub {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

/// The `channel` of `kernels/rust-toolchain.toml`, the one place the nightly is named.
fn pinned_toolchain(kernels: &Path) -> String {
    let file = kernels.join("rust-toolchain.toml");
    let text = fs::read_to_string(&file)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", file.display())));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.split('"').nth(1))
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| fail(&format!("{} names no channel", file.display())))
}

/// Fails early, with the command to run, when the pinned nightly or one of its components is missing.
fn check_toolchain(kernels: &Path, toolchain: &str) {
    let install = format!(
        "rustup toolchain install {toolchain} --profile minimal --component rust-src --component llvm-tools"
    );
    let sysroot = kernel_cargo(kernels)
        .env_remove("CARGO")
        .args(["--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|_| {
            let mut rustc = Command::new("rustc");
            rustc
                .current_dir(kernels)
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("RUSTC");
            rustc.args(["--print", "sysroot"]).output().ok()
        })
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        fail(&format!(
            "FLASHMLA_BUILD_KERNELS=1 rebuilds the GPU kernels with the Rust toolchain {toolchain} \
             (pinned in kernels/rust-toolchain.toml), which rustup could not run. Install it with:\n    \
             {install}\nor leave FLASHMLA_BUILD_KERNELS unset to embed the carried PTX (host/ptx/)"
        ));
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        fail(&format!(
            "{toolchain} lacks the rust-src component (needed for -Zbuild-std=core). Run:\n    \
             rustup component add rust-src --toolchain {toolchain}"
        ));
    }
    let has_llvm_link = fs::read_dir(sysroot.join("lib/rustlib"))
        .map(|dirs| {
            dirs.flatten()
                .any(|d| d.path().join("bin/llvm-link").exists())
        })
        .unwrap_or(false);
    if !has_llvm_link {
        fail(&format!(
            "{toolchain} lacks the llvm-tools component (llvm-link, opt, llc for kernels/tools/ptx-link.sh). Run:\n    \
             rustup component add llvm-tools --toolchain {toolchain}"
        ));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    panic!("flashmla build script: {msg}");
}
