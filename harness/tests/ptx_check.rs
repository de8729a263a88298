//! Assembles every embedded PTX module with NVIDIA's `ptxas` (no GPU needed) and fails on register
//! spills or local-memory stack frames: no kernel may have any.
//!
//! For the sm_90a module it also checks that `ptxas` did not serialise any `wgmma` (warning C7519), and,
//! with `cuobjdump` beside `ptxas`, that the Hopper decode kernels' SASS really has the tensor-core
//! (`HGMMA`) and TMA (`UTMALDG`) instructions and no local-memory traffic.
//!
//! `ptxas` comes from PyPI (`pip install nvidia-cuda-nvcc`); see [`ptxas_candidates`] for where it is
//! looked for (`FLASHMLA_PTXAS=/path/to/ptxas` names it). Without it the check is *skipped*, never
//! passed, unless `FLASHMLA_REQUIRE_PTXAS=1`, when it fails.
use flashmla::ptx::{kernel, PtxArch, PtxModule, MODULES};
use flashmla_harness::runner::{self, Fail, Outcome, Pass, Skip};
use std::path::PathBuf;
use std::process::Command;

/// Where `ptxas` is looked for, in order: `$FLASHMLA_PTXAS`; `PATH`; `/usr/local/cuda/bin`; the venv
/// `.ci/run` installs into (`$FLASHMLA_CUDA_VENV`, default `~/.cache/flashmla/cuda-venv`); and the
/// `nvidia` package of `python3` (where `pip install nvidia-cuda-nvcc` puts it: `nvidia/cu13/bin`, or
/// `nvidia/cuda_nvcc/bin` for CUDA 12 wheels).
fn ptxas_candidates() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("FLASHMLA_PTXAS")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("ptxas")));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/bin/ptxas"));
    let venv = std::env::var_os("FLASHMLA_CUDA_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flashmla/cuda-venv"))
        });
    let mut nvidia_dirs: Vec<PathBuf> = venv
        .and_then(|v| std::fs::read_dir(v.join("lib")).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/nvidia"))
        .collect();
    // The `nvidia` namespace package of the python3 on PATH (user or system site-packages).
    if let Ok(out) = Command::new("python3")
        .args(["-c", "import nvidia; print('\\n'.join(nvidia.__path__))"])
        .output()
    {
        nvidia_dirs.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| PathBuf::from(l.trim())),
        );
    }
    for dir in nvidia_dirs {
        candidates.push(dir.join("cu13/bin/ptxas"));
        candidates.push(dir.join("cuda_nvcc/bin/ptxas"));
    }
    candidates
}

fn find_ptxas() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FLASHMLA_PTXAS") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("FLASHMLA_PTXAS={} is not a file", p.display()))
        };
    }
    let candidates = ptxas_candidates();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "ptxas not found (pip install nvidia-cuda-nvcc; or point FLASHMLA_PTXAS at a ptxas). Looked in: {}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// One entry function's line of `ptxas -v`; a field ptxas's text did not give stays `None`, and the
/// check fails on it rather than reading a missing number as 0 spills.
#[derive(Debug, Default)]
struct KernelReport {
    name: String,
    registers: Option<u32>,
    stack_bytes: Option<u32>,
    spill_stores: Option<u32>,
    spill_loads: Option<u32>,
}

/// Parses `ptxas -v` output into one report per entry function.
fn parse(report: &str, module: &PtxModule) -> Vec<KernelReport> {
    let entries: Vec<&str> = module.kernel_names().collect();
    let mut out: Vec<KernelReport> = Vec::new();
    let mut current: Option<KernelReport> = None;
    let number_before = |line: &str, word: &str| -> Option<u32> {
        let idx = line.find(word)?;
        line[..idx].split_whitespace().last()?.parse().ok()
    };
    for line in report.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            if let Some(k) = current.take() {
                out.push(k);
            }
            let name = rest.trim().to_owned();
            current = entries.contains(&name.as_str()).then(|| KernelReport {
                name,
                ..Default::default()
            });
        } else if let Some(k) = current.as_mut() {
            if line.contains("stack frame") {
                k.stack_bytes = number_before(line, "bytes stack frame");
                k.spill_stores = number_before(line, "bytes spill stores");
                k.spill_loads = number_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = number_before(line, "registers");
            }
        }
    }
    out.extend(current);
    out
}

fn check_module(module: &PtxModule) -> Outcome {
    let ptxas = match find_ptxas() {
        Ok(p) => p,
        Err(msg) => {
            return if std::env::var("FLASHMLA_REQUIRE_PTXAS").as_deref() == Ok("1") {
                Fail(format!("{msg}, and FLASHMLA_REQUIRE_PTXAS=1"))
            } else {
                Skip(msg)
            };
        }
    };
    let dir = std::env::temp_dir().join(format!("flashmla-ptx-check-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let ptx = dir.join(format!("{}.ptx", module.name));
    let cubin = dir.join(format!("{}.cubin", module.name));
    if let Err(e) = std::fs::write(&ptx, module.source) {
        return Fail(format!("writing {}: {e}", ptx.display()));
    }
    let output = match Command::new(&ptxas)
        .arg(format!("-arch={}", module.arch.ptxas_arch()))
        .arg("-v")
        .arg(&ptx)
        .arg("-o")
        .arg(&cubin)
        .output()
    {
        Ok(o) => o,
        Err(e) => return Fail(format!("running {}: {e}", ptxas.display())),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Fail(format!("ptxas rejected {}:\n{text}", module.name));
    }
    let sass = if module.arch == PtxArch::Sm90a {
        let r = check_hopper_sass(&ptxas, &cubin, &text);
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Ok(summary) => summary,
            Err(e) => return Fail(format!("{}: {e}", module.name)),
        }
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        String::new()
    };
    let reports = parse(&text, module);
    let expected = module.kernel_names().count();
    if reports.len() != expected {
        return Fail(format!(
            "ptxas reported {} of {expected} kernels:\n{text}",
            reports.len()
        ));
    }
    let mut summary = String::new();
    let mut bad = Vec::new();
    for k in &reports {
        let (Some(registers), Some(stack), Some(stores), Some(loads)) =
            (k.registers, k.stack_bytes, k.spill_stores, k.spill_loads)
        else {
            return Fail(format!(
                "{}: could not read registers, stack frame and spills of {} from ptxas -v:\n{text}",
                module.name, k.name
            ));
        };
        if registers == 0 {
            return Fail(format!(
                "{}: ptxas reported 0 registers for {}:\n{text}",
                module.name, k.name
            ));
        }
        summary += &format!(
            "\n    {:<40} {registers:>3} regs, {stack} B stack, {stores} B spill stores, {loads} B spill loads",
            k.name
        );
        if (stack | stores | loads) != 0 {
            bad.push(k.name.clone());
        }
    }
    if text.contains("warning") {
        summary += &format!("\n  ptxas warnings:\n{text}");
    }
    if bad.is_empty() {
        Pass(format!(
            "{} ({}):{summary}{sass}",
            module.name,
            module.arch.ptxas_arch()
        ))
    } else {
        Fail(format!(
            "{}: stack frame or spills in {bad:?}:{summary}",
            module.name
        ))
    }
}

/// The Hopper kernels' SASS: every wgmma issued asynchronously (no C7519 from ptxas), HGMMA and
/// UTMALDG present, no LDL/STL. `cuobjdump` is looked up beside `ptxas`; without it only the ptxas part
/// is checked (and said so), unless `FLASHMLA_REQUIRE_PTXAS=1`.
fn check_hopper_sass(
    ptxas: &std::path::Path,
    cubin: &std::path::Path,
    ptxas_text: &str,
) -> Result<String, String> {
    if ptxas_text.contains("C7519")
        || ptxas_text.contains("wgmma.mma_async instructions are serialized")
    {
        return Err(format!(
            "ptxas serialised wgmma instructions:\n{ptxas_text}"
        ));
    }
    let cuobjdump = ptxas.with_file_name("cuobjdump");
    if !cuobjdump.is_file() {
        let msg = format!("cuobjdump not found beside {}", ptxas.display());
        return if std::env::var("FLASHMLA_REQUIRE_PTXAS").as_deref() == Ok("1") {
            Err(format!(
                "{msg} (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm), and FLASHMLA_REQUIRE_PTXAS=1"
            ))
        } else {
            Ok(format!("\n  SASS not checked: {msg}"))
        };
    }
    let mut summary = String::new();
    for name in kernel::SM90A_ONLY {
        // cuobjdump runs nvdisasm, which pip installs beside it.
        let path = std::env::join_paths(
            cuobjdump
                .parent()
                .map(std::path::Path::to_path_buf)
                .into_iter()
                .chain(std::env::split_paths(
                    &std::env::var_os("PATH").unwrap_or_default(),
                )),
        )
        .map_err(|e| e.to_string())?;
        let out = Command::new(&cuobjdump)
            .env("PATH", path)
            .args(["-sass", "-fun", name])
            .arg(cubin)
            .output()
            .map_err(|e| format!("running {}: {e}", cuobjdump.display()))?;
        let sass = String::from_utf8_lossy(&out.stdout);
        let count = |op: &str| sass.lines().filter(|l| l.contains(op)).count();
        let (hgmma, utmaldg, local) = (
            count("HGMMA"),
            count("UTMALDG"),
            count("LDL") + count("STL"),
        );
        summary +=
            &format!("\n    {name:<40} SASS: {hgmma} HGMMA, {utmaldg} UTMALDG, {local} LDL/STL");
        if !out.status.success() || hgmma == 0 || utmaldg == 0 || local != 0 {
            return Err(format!(
                "{name}: SASS lacks HGMMA/UTMALDG or has local memory:{summary}"
            ));
        }
    }
    Ok(summary)
}

fn ptxas_sm90a() -> Outcome {
    check_module(&MODULES[0])
}

fn ptxas_sm80() -> Outcome {
    check_module(&MODULES[1])
}

fn main() {
    runner::run(
        "ptx_check",
        flashmla_harness::cases![ptxas_sm90a, ptxas_sm80],
    );
}
