//! `flashmla`: the command-line front end.
//!
//! * `flashmla info`: driver, device, and every kernel's registers / shared memory.
//! * `flashmla bench`: FlashMLA's benchmark grid (or a subset / one shape), timed with CUDA events.
//! * `flashmla check`: the correctness sweep against the f64 CPU reference.
use clap::{Parser, Subcommand, ValueEnum};
use flashmla::bench::{flashmla_grid, BenchRow, BenchShape, Bencher};
use flashmla::ptx::PtxArch;
use flashmla::testdata::{
    corner_cases, flashmla_sweep, head_grid_sample, run_case, DEFAULT_ROW_BUDGET,
};
use flashmla::{DType, DecodeKernel, Error, FlashMla, Result};
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flashmla",
    version,
    about = "FlashMLA's MLA decode kernels in pure Rust: device info, checks and benchmarks"
)]
struct Cli {
    /// CUDA device ordinal.
    #[arg(long, global = true, default_value_t = 0)]
    device: usize,
    /// PTX module: the best for the device (default), or `sm80` for the portable kernels.
    #[arg(long, global = true, value_enum)]
    module: Option<Module>,
    /// Split-KV kernel: the best for the device (auto), the Hopper wgmma/TMA one, or the portable one.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    kernel: Kernel,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Module {
    Sm90a,
    Sm80,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kernel {
    Auto,
    Hopper,
    Portable,
}

impl From<Kernel> for DecodeKernel {
    fn from(k: Kernel) -> Self {
        match k {
            Kernel::Auto => DecodeKernel::Auto,
            Kernel::Hopper => DecodeKernel::Hopper,
            Kernel::Portable => DecodeKernel::Portable,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Dtype {
    Bf16,
    Fp16,
}

#[derive(Subcommand)]
enum Command {
    /// Driver and device, and the registers / shared memory of every kernel in the embedded PTX.
    Info,
    /// Time the decode (split + combine, metadata reused) on FlashMLA's grid and print a table.
    Bench(BenchArgs),
    /// Run the correctness sweep against the f64 CPU reference.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Only shapes with this batch size.
    #[arg(long)]
    b: Option<usize>,
    /// Only shapes with this many query tokens.
    #[arg(long)]
    s_q: Option<usize>,
    /// Only shapes with this mean KV length.
    #[arg(long)]
    s_k: Option<usize>,
    /// Only shapes with this many query heads.
    #[arg(long)]
    h_q: Option<usize>,
    /// KV heads (FlashMLA's grid uses 1).
    #[arg(long, default_value_t = 1)]
    h_kv: usize,
    /// Only varlen (true) or fixed-length (false) shapes.
    #[arg(long)]
    varlen: Option<bool>,
    /// Non-causal instead of FlashMLA's causal.
    #[arg(long)]
    no_causal: bool,
    /// Benchmark exactly this shape (needs --b --s-q --s-k --h-q) instead of filtering the grid.
    #[arg(long)]
    one: bool,
    /// Input type.
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: Dtype,
    /// Timed repetitions per shape (median reported).
    #[arg(long, default_value_t = Bencher::DEFAULT_ITERS)]
    iters: usize,
    /// Write the rows as CSV.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Write the rows and ceilings as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the table as Markdown (with both floors per shape), as kept in BENCHMARKS.md.
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Which cases: `flashmla` (FlashMLA's 48-case sweep), `head` (random draw of FlashMLA HEAD's grid),
    /// `corner`, or `all`.
    #[arg(long, default_value = "all")]
    suite: String,
    /// Cases to draw from HEAD's grid.
    #[arg(long, default_value_t = 60)]
    head_cases: usize,
    /// Seed (default: the clock; printed so a failure can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Input type of FlashMLA's sweep.
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: Dtype,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info => info(&cli),
        Command::Bench(args) => bench(&cli, args),
        Command::Check(args) => check(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flashmla: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(cli: &Cli) -> Result<FlashMla> {
    let fm = FlashMla::new(cli.device)?;
    match cli.module {
        None => Ok(fm),
        Some(m) => {
            let arch = match m {
                Module::Sm90a => PtxArch::Sm90a,
                Module::Sm80 => PtxArch::Sm80,
            };
            FlashMla::with_module(fm.context().clone(), Some(arch))
        }
    }
}

fn info(cli: &Cli) -> Result<ExitCode> {
    println!(
        "flashmla {} (PTX built by rustc's NVPTX backend)",
        env!("CARGO_PKG_VERSION")
    );
    for m in flashmla::ptx::MODULES {
        println!(
            "  embedded module {:<15} {} kernels, {} bytes",
            m.name,
            m.kernel_names().count(),
            m.source.len()
        );
    }
    let fm = open(cli)?;
    let d = fm.device_info();
    println!(
        "driver      CUDA {}.{}",
        d.driver_version / 1000,
        d.driver_version % 1000 / 10
    );
    println!(
        "device {}    {} (compute capability {}.{})",
        d.ordinal, d.name, d.compute_capability.0, d.compute_capability.1
    );
    println!("SMs         {}", d.sm_count);
    println!(
        "memory      {:.1} GiB, L2 {:.1} MiB",
        d.total_memory_bytes as f64 / (1u64 << 30) as f64,
        d.l2_cache_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "smem/block  {} KiB (opt-in)",
        d.max_shared_memory_per_block_optin / 1024
    );
    println!("module      {}", fm.ptx_module().name);
    println!();
    println!(
        "{:<36} {:>5} {:>12} {:>10} {:>12} {:>9} {:>5}",
        "kernel", "regs", "static smem", "local/thr", "max threads", "ptx arch", "sass"
    );
    for k in fm.kernels()? {
        println!(
            "{:<36} {:>5} {:>12} {:>10} {:>12} {:>9} {:>5}",
            k.name,
            k.registers,
            k.static_shared_bytes,
            k.local_bytes,
            k.max_threads_per_block,
            k.ptx_version,
            k.binary_version
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn selected_shapes(a: &BenchArgs) -> Vec<BenchShape> {
    if a.one {
        return vec![BenchShape {
            b: a.b.unwrap_or(128),
            s_q: a.s_q.unwrap_or(1),
            s_k: a.s_k.unwrap_or(4096),
            h_q: a.h_q.unwrap_or(128),
            h_kv: a.h_kv,
            varlen: a.varlen.unwrap_or(false),
            causal: !a.no_causal,
            flashmla_ms: None,
        }];
    }
    flashmla_grid()
        .into_iter()
        .filter(|s| a.b.is_none_or(|v| v == s.b))
        .filter(|s| a.s_q.is_none_or(|v| v == s.s_q))
        .filter(|s| a.s_k.is_none_or(|v| v == s.s_k))
        .filter(|s| a.h_q.is_none_or(|v| v == s.h_q))
        .filter(|s| a.varlen.is_none_or(|v| v == s.varlen))
        .map(|s| BenchShape {
            h_kv: a.h_kv,
            causal: !a.no_causal,
            flashmla_ms: if a.h_kv == 1 && !a.no_causal && a.dtype == Dtype::Bf16 {
                s.flashmla_ms
            } else {
                None
            },
            ..s
        })
        .collect()
}

fn bench(cli: &Cli, a: &BenchArgs) -> Result<ExitCode> {
    let shapes = selected_shapes(a);
    if shapes.is_empty() {
        eprintln!("flashmla bench: no shape of the grid matches the filters (use --one for a custom shape)");
        return Ok(ExitCode::FAILURE);
    }
    let fm = open(cli)?;
    let stream = fm.new_stream()?;
    let dtype = if a.dtype == Dtype::Fp16 {
        DType::F16
    } else {
        DType::Bf16
    };
    let mut bencher = Bencher::new(&fm, &stream, a.iters)?;
    bencher.kernel = cli.kernel.into();
    eprint!("measuring ceilings (2 GiB copy, cuBLAS bf16 8192³)... ");
    let ceilings = bencher.ceilings()?;
    eprintln!("done");
    let mut rows: Vec<BenchRow> = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        eprint!(
            "\r[{}/{}] b={} s_q={} s_k={} h_q={}{}          ",
            i + 1,
            shapes.len(),
            shape.b,
            shape.s_q,
            shape.s_k,
            shape.h_q,
            if shape.varlen { " varlen" } else { "" }
        );
        let _ = std::io::stderr().flush();
        rows.push(bencher.decode_row(shape, dtype, 0x5EED + i as u64)?);
    }
    eprintln!();
    let d = fm.device_info();
    let matmul = ceilings.matmul_tflops;
    let header = format!(
        "{} ({} SMs), module {}, kernel {}, {}; ceilings in this run: copy {:.0} GB/s, bf16 matmul {}",
        d.name,
        d.sm_count,
        fm.ptx_module().name,
        fm.resolve_kernel(cli.kernel.into())?,
        dtype,
        ceilings.copy_gbps,
        matmul.map_or(format!("n/a ({})", ceilings.matmul_note), |t| format!(
            "{t:.0} TFLOPS"
        ))
    );
    println!("{header}");
    println!(
        "{:>4} {:>3} {:>6} {:>4} {:>4} {:>6} {:>5} | {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} | {:>9} {:>7}",
        "b",
        "s_q",
        "s_k",
        "h_q",
        "h_kv",
        "varlen",
        "parts",
        "µs",
        "floor µs",
        "TFLOPS",
        "GB/s",
        "%copy",
        "%mm",
        "FlashMLA",
        "speedup"
    );
    for r in &rows {
        let s = &r.shape;
        let pct_mm = matmul.map_or("-".to_string(), |m| format!("{:.1}", 100.0 * r.tflops / m));
        let (fl, speedup) = match s.flashmla_ms {
            Some(ms) => (
                format!("{:.1}", ms * 1e3),
                format!("{:.2}x", ms * 1e3 / r.us),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:>4} {:>3} {:>6} {:>4} {:>4} {:>6} {:>5} | {:>9.1} {:>9.1} {:>8.1} {:>7.0} {:>7.1} {:>7} | {:>9} {:>7}",
            s.b,
            s.s_q,
            s.s_k,
            s.h_q,
            s.h_kv,
            if s.varlen { "yes" } else { "no" },
            r.num_sm_parts,
            r.us,
            r.memory_floor_us(&ceilings)
                .max(r.compute_floor_us(&ceilings).unwrap_or(0.0)),
            r.tflops,
            r.gbps,
            100.0 * r.gbps / ceilings.copy_gbps,
            pct_mm,
            fl,
            speedup
        );
    }
    if let Some(path) = &a.markdown {
        let mut text = format!("{header}\n\n");
        text += "| b | s_q | s_k | h_q | varlen | parts | µs (median) | memory floor µs | compute floor µs | TFLOPS | GB/s | % copy | % matmul | FlashMLA µs | vs FlashMLA |\n";
        text += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &rows {
            let s = &r.shape;
            let opt = |v: Option<f64>, digits: usize| {
                v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
            };
            text += &format!(
                "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.0} | {:.1} | {} | {} | {} |\n",
                s.b,
                s.s_q,
                s.s_k,
                s.h_q,
                if s.varlen { "yes" } else { "no" },
                r.num_sm_parts,
                r.us,
                r.memory_floor_us(&ceilings),
                opt(r.compute_floor_us(&ceilings), 1),
                r.tflops,
                r.gbps,
                100.0 * r.gbps / ceilings.copy_gbps,
                opt(matmul.map(|m| 100.0 * r.tflops / m), 1),
                opt(s.flashmla_ms.map(|ms| ms * 1e3), 1),
                s.flashmla_ms
                    .map_or("-".to_string(), |ms| format!("{:.2}x", ms * 1e3 / r.us))
            );
        }
        std::fs::write(path, text).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &a.csv {
        let mut text = String::from("b,s_q,s_k,h_q,h_kv,varlen,causal,dtype,total_seqlen_k,num_sm_parts,us_median,us_min,tflops,gbps,copy_gbps,matmul_tflops,flashmla_us,memory_floor_us,compute_floor_us\n");
        for r in &rows {
            let s = &r.shape;
            text += &format!(
                "{},{},{},{},{},{},{},{},{},{},{:.2},{:.2},{:.2},{:.1},{:.1},{},{},{:.2},{}\n",
                s.b,
                s.s_q,
                s.s_k,
                s.h_q,
                s.h_kv,
                s.varlen as u8,
                s.causal as u8,
                r.dtype,
                r.total_seqlen_k,
                r.num_sm_parts,
                r.us,
                r.min_us,
                r.tflops,
                r.gbps,
                ceilings.copy_gbps,
                matmul.map_or(String::new(), |m| format!("{m:.1}")),
                s.flashmla_ms
                    .map_or(String::new(), |ms| format!("{:.1}", ms * 1e3)),
                r.memory_floor_us(&ceilings),
                r.compute_floor_us(&ceilings)
                    .map_or(String::new(), |f| format!("{f:.2}"))
            );
        }
        std::fs::write(path, text).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &a.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                let s = &r.shape;
                format!(
                    "{{\"b\":{},\"s_q\":{},\"s_k\":{},\"h_q\":{},\"h_kv\":{},\"varlen\":{},\"causal\":{},\"dtype\":\"{}\",\"total_seqlen_k\":{},\"num_sm_parts\":{},\"us_median\":{:.3},\"us_min\":{:.3},\"tflops\":{:.3},\"gbps\":{:.2},\"flashmla_us\":{}}}",
                    s.b, s.s_q, s.s_k, s.h_q, s.h_kv, s.varlen, s.causal, r.dtype, r.total_seqlen_k, r.num_sm_parts, r.us, r.min_us, r.tflops, r.gbps,
                    s.flashmla_ms.map_or("null".into(), |ms| format!("{:.2}", ms * 1e3))
                )
            })
            .collect();
        let text = format!(
            "{{\"device\":\"{}\",\"module\":\"{}\",\"copy_gbps\":{:.1},\"matmul_tflops\":{},\"rows\":[\n{}\n]}}\n",
            d.name,
            fm.ptx_module().name,
            ceilings.copy_gbps,
            matmul.map_or("null".into(), |m| format!("{m:.1}")),
            items.join(",\n")
        );
        std::fs::write(path, text).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check(cli: &Cli, a: &CheckArgs) -> Result<ExitCode> {
    let fm = open(cli)?;
    let stream = fm.new_stream()?;
    let seed = a
        .seed
        .unwrap_or_else(|| flashmla::rng::SplitMix64::from_time().1);
    let dtype = if a.dtype == Dtype::Fp16 {
        DType::F16
    } else {
        DType::Bf16
    };
    let mut cases = Vec::new();
    if matches!(a.suite.as_str(), "flashmla" | "all") {
        cases.extend(flashmla_sweep(dtype, seed));
    }
    if matches!(a.suite.as_str(), "head" | "all") {
        cases.extend(head_grid_sample(a.head_cases, seed));
    }
    if matches!(a.suite.as_str(), "corner" | "all") {
        cases.extend(corner_cases(seed));
    }
    for c in &mut cases {
        c.kernel = cli.kernel.into();
    }
    if cases.is_empty() {
        eprintln!(
            "flashmla check: unknown suite {:?} (flashmla, head, corner, all)",
            a.suite
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{} cases on {} ({}, kernel {}), seed {seed}",
        cases.len(),
        fm.device_info().name,
        fm.ptx_module().name,
        fm.resolve_kernel(cli.kernel.into())?
    );
    let (mut passed, mut failed) = (0, 0);
    for (i, spec) in cases.iter().enumerate() {
        let report = run_case(&fm, &stream, spec, DEFAULT_ROW_BUDGET)?;
        let ok = report.passed();
        println!(
            "[{}/{}] {} {}",
            i + 1,
            cases.len(),
            if ok { "ok  " } else { "FAIL" },
            report.summary()
        );
        if ok {
            passed += 1
        } else {
            failed += 1
        }
    }
    println!("check: {passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
