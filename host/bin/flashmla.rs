//! `flashmla`: the command-line front end.
//!
//! * `flashmla info`: driver, device, and every kernel's registers / shared memory.
//! * `flashmla bench`: FlashMLA's benchmark grid (or a subset / one shape), timed with CUDA events.
//! * `flashmla check`: the correctness sweep against the f64 CPU reference.
use clap::{Parser, Subcommand, ValueEnum};
use flashmla::bench::{flashmla_grid, BenchRow, BenchShape, Bencher, FlashMlaTimes};
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
    /// FlashMLA's times from this run on this GPU, as printed by the team's anchor script
    /// `time_flashmla.py` (CSV `b,s_q,s_k,h_q,varlen,total_seqlen_k,us`); repeat for each FlashMLA
    /// version. Per shape the fastest is the bar of the "vs FlashMLA" column; shapes FlashMLA ran on
    /// other lengths are an error. Without it the column stays empty: absolute times move ~15% between
    /// runs, so only a ratio measured side by side is a claim.
    #[arg(long = "flashmla-csv")]
    flashmla_csv: Vec<std::path::PathBuf>,
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
            reference: None,
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
            reference: s
                .reference
                .filter(|_| a.h_kv == 1 && !a.no_causal && a.dtype == Dtype::Bf16),
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
    let mut flashmla = FlashMlaTimes::default();
    for path in &a.flashmla_csv {
        flashmla.add_file(path)?;
    }
    let same_run = a.dtype == Dtype::Bf16 && !flashmla.is_empty();
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
    let mut rows: Vec<(BenchRow, Option<f64>)> = Vec::new();
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
        let row = bencher.decode_row(shape, dtype, 0x5EED + i as u64)?;
        let fl = if same_run {
            flashmla
                .best_us(shape, row.total_seqlen_k)?
                .map(|(us, _)| us)
        } else {
            None
        };
        rows.push((row, fl));
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
    let ratio =
        |fl: Option<f64>, us: f64| fl.map_or("-".to_string(), |f| format!("{:.2}x", f / us));
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!("{header}");
    if !same_run {
        println!("no FlashMLA times from this run (--flashmla-csv): the \"vs FlashMLA\" column is empty; \"ref\" is FlashMLA's best time in the 2026-11-30 run, for orientation only");
    }
    println!(
        "{:>4} {:>3} {:>6} {:>4} {:>4} {:>6} {:>5} | {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} | {:>9} {:>7} | {:>9}",
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
        "vs FM",
        "ref µs"
    );
    for (r, fl) in &rows {
        let s = &r.shape;
        let pct_mm = matmul.map_or("-".to_string(), |m| format!("{:.1}", 100.0 * r.tflops / m));
        println!(
            "{:>4} {:>3} {:>6} {:>4} {:>4} {:>6} {:>5} | {:>9.1} {:>9.1} {:>8.1} {:>7.0} {:>7.1} {:>7} | {:>9} {:>7} | {:>9}",
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
            opt(*fl, 1),
            ratio(*fl, r.us),
            opt(s.reference.map(|f| f.best_us), 1),
        );
    }
    let summary = ratio_summary(&rows);
    for line in &summary {
        println!("{line}");
    }
    if let Some(path) = &a.markdown {
        let mut text = format!("{header}\n\n");
        text += "| b | s_q | s_k | h_q | varlen | parts | µs (median) | memory floor µs | compute floor µs | TFLOPS | GB/s | % copy | % matmul | FlashMLA µs (this run) | vs FlashMLA |\n";
        text += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for (r, fl) in &rows {
            let s = &r.shape;
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
                opt(*fl, 1),
                ratio(*fl, r.us)
            );
        }
        for line in &summary {
            text += &format!("\n{line}\n");
        }
        std::fs::write(path, text).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &a.csv {
        let mut text = String::from("b,s_q,s_k,h_q,h_kv,varlen,causal,dtype,total_seqlen_k,num_sm_parts,us_median,us_min,tflops,gbps,copy_gbps,matmul_tflops,flashmla_us,flashmla_ref_best_us,memory_floor_us,compute_floor_us\n");
        for (r, fl) in &rows {
            let s = &r.shape;
            text += &format!(
                "{},{},{},{},{},{},{},{},{},{},{:.2},{:.2},{:.2},{:.1},{:.1},{},{},{},{:.2},{}\n",
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
                fl.map_or(String::new(), |us| format!("{us:.1}")),
                s.reference
                    .map_or(String::new(), |f| format!("{:.1}", f.best_us)),
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
            .map(|(r, fl)| {
                let s = &r.shape;
                format!(
                    "{{\"b\":{},\"s_q\":{},\"s_k\":{},\"h_q\":{},\"h_kv\":{},\"varlen\":{},\"causal\":{},\"dtype\":\"{}\",\"total_seqlen_k\":{},\"num_sm_parts\":{},\"us_median\":{:.3},\"us_min\":{:.3},\"tflops\":{:.3},\"gbps\":{:.2},\"flashmla_us\":{}}}",
                    s.b, s.s_q, s.s_k, s.h_q, s.h_kv, s.varlen, s.causal, r.dtype, r.total_seqlen_k, r.num_sm_parts, r.us, r.min_us, r.tflops, r.gbps,
                    fl.map_or("null".into(), |us| format!("{us:.2}"))
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

/// Lines summarising the ratios to FlashMLA measured in this run (FlashMLA µs / ours), by regime:
/// compute-bound (h_q·s_q ≥ 128 rows per KV head), memory-bound fixed-length, memory-bound varlen,
/// and batches other than 128.
fn ratio_summary(rows: &[(BenchRow, Option<f64>)]) -> Vec<String> {
    type Member = fn(&BenchShape) -> bool;
    let classes: [(&str, Member); 5] = [
        ("all", |_| true),
        ("compute-bound (h_q·s_q ≥ 128)", |s| {
            s.b == 128 && s.h_q * s.s_q / s.h_kv >= 128
        }),
        ("memory-bound, fixed length", |s| {
            s.b == 128 && s.h_q * s.s_q / s.h_kv < 128 && !s.varlen
        }),
        ("memory-bound, varlen", |s| {
            s.b == 128 && s.h_q * s.s_q / s.h_kv < 128 && s.varlen
        }),
        ("b ≠ 128", |s| s.b != 128),
    ];
    let mut lines = Vec::new();
    for (name, member) in classes {
        let mut ratios: Vec<f64> = rows
            .iter()
            .filter(|(r, _)| member(&r.shape))
            .filter_map(|(r, fl)| fl.map(|f| f / r.us))
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let n = ratios.len();
        let at_par = ratios.iter().filter(|&&x| x >= 1.0).count();
        let (min, max) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
        let median = flashmla::bench::median(&mut ratios);
        lines.push(format!(
            "vs FlashMLA (this run), {name}: {n} shapes, {min:.2}–{max:.2}x, median {median:.2}x, {at_par} at ≥ 1.00x"
        ));
    }
    lines
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
