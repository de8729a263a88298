//! Builds the device crate `kernels/` into one PTX module per target architecture and leaves them in
//! `OUT_DIR` for `host/ptx.rs` to embed.
//!
//! * `FLASHMLA_PTX_DIR=/dir` uses prebuilt modules (`/dir/flashmla_sm90a.ptx`, `/dir/flashmla_sm80.ptx`)
//!   and skips the nested build, so the crate builds with stable Rust alone.
//! * `DOCS_RS` set: empty modules (docs only).
//! * otherwise: `cargo build --release` inside `kernels/`, which rustup runs with the nightly pinned by
//!   `kernels/rust-toolchain.toml` (needs the `rust-src` and `llvm-tools` components).
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

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels = manifest_dir.join("kernels");
    println!("cargo::rerun-if-env-changed=FLASHMLA_PTX_DIR");
    println!("cargo::rerun-if-env-changed=DOCS_RS");

    if let Some(dir) = env::var_os("FLASHMLA_PTX_DIR") {
        let dir = PathBuf::from(dir);
        for (name, ..) in MODULES {
            let src = dir.join(format!("{name}.ptx"));
            println!("cargo::rerun-if-changed={}", src.display());
            if let Err(e) = fs::copy(&src, out_dir.join(format!("{name}.ptx"))) {
                fail(&format!(
                    "FLASHMLA_PTX_DIR is set but {} cannot be read: {e}",
                    src.display()
                ));
            }
        }
        return;
    }
    if env::var_os("DOCS_RS").is_some() {
        for (name, ..) in MODULES {
            fs::write(out_dir.join(format!("{name}.ptx")), "").expect("write to OUT_DIR");
        }
        return;
    }

    for path in [
        "src",
        "abi/src",
        "abi/Cargo.toml",
        "Cargo.toml",
        "rust-toolchain.toml",
        ".cargo/config.toml",
        "tools",
    ] {
        println!("cargo::rerun-if-changed={}", kernels.join(path).display());
    }
    let toolchain = pinned_toolchain(&kernels);
    check_toolchain(&kernels, &toolchain);

    // The modules are independent builds (different target CPUs); run them side by side.
    let children: Vec<_> = MODULES
        .iter()
        .map(|&(name, cpu, ptx, cfg)| {
            let target_dir = out_dir.join(format!("kernels-{name}"));
            let mut cmd = kernel_cargo(&kernels);
            cmd.args(["build", "--release", "--target-dir"])
                .arg(&target_dir);
            cmd.env(
                "RUSTFLAGS",
                format!(
                    "-C target-cpu={cpu} -C target-feature={ptx} --cfg flashmla_arch=\"{cfg}\""
                ),
            );
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
            "the GPU kernels need the Rust toolchain {toolchain} (pinned in kernels/rust-toolchain.toml), \
             which rustup could not run. Install it with:\n    {install}\n\
             or build against prebuilt PTX with FLASHMLA_PTX_DIR=/path/to/ptx"
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
