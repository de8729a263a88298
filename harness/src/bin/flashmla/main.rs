//! `flashmla`: the command-line front end.
//!
//! * `flashmla info`: driver, device, and every kernel's registers / shared memory.
//! * `flashmla bench`: FlashMLA's benchmark grid (or a subset / one shape), timed with CUDA events.
//! * `flashmla check`: the correctness sweep against the f64 CPU reference.
mod args;

use args::{
    BenchArgs, CheckArgs, Cli, Command, Dtype, Module, Stop, Suite, EXIT_NO_GPU, EXIT_USAGE,
};
use flashmla::ptx::PtxArch;
use flashmla::{DType, DecodeShape, Error, FlashMla, Result};
use flashmla_harness::bench::{BenchRow, Bencher, FlashMlaTimes};
use flashmla_harness::check::{run_case, DEFAULT_ROW_BUDGET};
use flashmla_harness::shapes::{
    corner_cases, flashmla_grid, flashmla_sweep, head_grid_sample, BenchShape, SKEWED_BATCHES,
};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match args::parse(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(Stop::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(Stop::Version) => {
            println!("flashmla {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(Stop::Usage(msg)) => {
            eprintln!("flashmla: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match &cli.command {
        Command::Info => info(&cli),
        Command::Bench(args) => bench(&cli, args),
        Command::Check(args) => check(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(e @ (Error::NoDriver | Error::NoDevice { .. } | Error::UnsupportedArch { .. })) => {
            eprintln!("flashmla: error: {e}");
            ExitCode::from(EXIT_NO_GPU)
        }
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
    println!("  PTX: {}", flashmla::ptx::PTX_ORIGIN);
    for m in flashmla::ptx::MODULES {
        println!(
            "  embedded module {:<15} {} kernels, {} bytes, sha256 {}",
            m.name,
            m.kernel_names().count(),
            m.source.len(),
            m.sha256
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
        .chain(SKEWED_BATCHES.iter().map(|k| k.shape()))
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
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    // Every shape and every FlashMLA file is checked before the device is opened: a bad one is a usage
    // error on any machine.
    for s in &shapes {
        if let Err(e) = DecodeShape::new(s.b, s.s_q, s.h_q, s.h_kv) {
            eprintln!(
                "flashmla bench: b={} s_q={} h_q={} h_kv={}: {e}",
                s.b, s.s_q, s.h_q, s.h_kv
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    }
    let mut flashmla = FlashMlaTimes::default();
    for path in &a.flashmla_csv {
        if let Err(e) = flashmla.add_file(path) {
            eprintln!("flashmla bench: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
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
    bencher.num_sm_parts = a.sm_parts;
    bencher.step = a.step;
    eprint!("measuring ceilings (2 GiB copy, cuBLAS bf16 8192³)... ");
    let ceilings = bencher.ceilings()?;
    eprintln!("done");
    let mut rows: Vec<(BenchRow, Option<f64>)> = Vec::new();
    // One line rewritten in place on a terminal; one line per shape in a log.
    let terminal = std::io::stderr().is_terminal();
    for (i, shape) in shapes.iter().enumerate() {
        let progress = format!(
            "[{}/{}] b={} s_q={} s_k={} h_q={}{}",
            i + 1,
            shapes.len(),
            shape.b,
            shape.s_q,
            shape.s_k,
            shape.h_q,
            if shape.varlen { " varlen" } else { "" }
        );
        if terminal {
            eprint!("\r{progress:<60}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{progress}");
        }
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
    if terminal {
        eprintln!();
    }
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
    if a.step {
        println!(
            "decode step (get_mla_metadata + decode + combine, L2 flushed before each), median µs:"
        );
        println!(
            "{:>4} {:>3} {:>6} {:>4} {:>6} | {:>9} {:>11} {:>11}",
            "b", "s_q", "s_k", "h_q", "varlen", "decode", "step eager", "step graph"
        );
        for (r, _) in &rows {
            let s = &r.shape;
            println!(
                "{:>4} {:>3} {:>6} {:>4} {:>6} | {:>9.1} {:>11} {:>11}",
                s.b,
                s.s_q,
                s.s_k,
                s.h_q,
                if s.varlen { "yes" } else { "no" },
                r.us,
                opt(r.step_us, 1),
                opt(r.step_graph_us, 1),
            );
        }
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
        let mut text = String::from("b,s_q,s_k,h_q,h_kv,varlen,causal,dtype,total_seqlen_k,num_sm_parts,us_median,us_min,tflops,gbps,copy_gbps,matmul_tflops,flashmla_us,flashmla_ref_best_us,memory_floor_us,compute_floor_us,step_us,step_graph_us\n");
        for (r, fl) in &rows {
            let s = &r.shape;
            text += &format!(
                "{},{},{},{},{},{},{},{},{},{},{:.2},{:.2},{:.2},{:.1},{:.1},{},{},{},{:.2},{},{},{}\n",
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
                    .map_or(String::new(), |f| format!("{f:.2}")),
                r.step_us.map_or(String::new(), |v| format!("{v:.2}")),
                r.step_graph_us
                    .map_or(String::new(), |v| format!("{v:.2}"))
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
                    "{{\"b\":{},\"s_q\":{},\"s_k\":{},\"h_q\":{},\"h_kv\":{},\"varlen\":{},\"causal\":{},\"dtype\":\"{}\",\"total_seqlen_k\":{},\"num_sm_parts\":{},\"us_median\":{:.3},\"us_min\":{:.3},\"tflops\":{:.3},\"gbps\":{:.2},\"flashmla_us\":{},\"step_us\":{},\"step_graph_us\":{}}}",
                    s.b, s.s_q, s.s_k, s.h_q, s.h_kv, s.varlen, s.causal, r.dtype, r.total_seqlen_k, r.num_sm_parts, r.us, r.min_us, r.tflops, r.gbps,
                    fl.map_or("null".into(), |us| format!("{us:.2}")),
                    r.step_us.map_or("null".into(), |v| format!("{v:.2}")),
                    r.step_graph_us.map_or("null".into(), |v| format!("{v:.2}"))
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
        let median = flashmla_harness::bench::median(&mut ratios);
        lines.push(format!(
            "vs FlashMLA (this run), {name}: {n} shapes, {min:.2}–{max:.2}x, median {median:.2}x, {at_par} at ≥ 1.00x"
        ));
    }
    lines
}

fn check(cli: &Cli, a: &CheckArgs) -> Result<ExitCode> {
    let seed = a
        .seed
        .unwrap_or_else(|| flashmla_harness::rng::SplitMix64::from_time().1);
    let dtype = if a.dtype == Dtype::Fp16 {
        DType::F16
    } else {
        DType::Bf16
    };
    let mut cases = Vec::new();
    if matches!(a.suite, Suite::Flashmla | Suite::All) {
        cases.extend(flashmla_sweep(dtype, seed));
    }
    if matches!(a.suite, Suite::Head | Suite::All) {
        cases.extend(head_grid_sample(a.head_cases, seed));
    }
    if matches!(a.suite, Suite::Corner | Suite::All) {
        cases.extend(corner_cases(seed));
    }
    for c in &mut cases {
        c.kernel = cli.kernel.into();
    }
    let fm = open(cli)?;
    let stream = fm.new_stream()?;
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
