//! `flashmla`: the command-line front end. `flashmla info` describes the device and the kernels.
use clap::{Parser, Subcommand};
use flashmla::{FlashMla, Result};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Driver and device, and the registers / shared memory of every kernel in the embedded PTX.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(cli.device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flashmla: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info(ordinal: usize) -> Result<()> {
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
    let fm = FlashMla::new(ordinal)?;
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
        "{:<40} {:>5} {:>12} {:>11} {:>11} {:>4} {:>5}",
        "kernel", "regs", "static smem", "local/thr", "max threads", "ptx", "sass"
    );
    for k in fm.kernels()? {
        println!(
            "{:<40} {:>5} {:>12} {:>11} {:>11} {:>4} {:>5}",
            k.name,
            k.registers,
            k.static_shared_bytes,
            k.local_bytes,
            k.max_threads_per_block,
            k.ptx_version,
            k.binary_version
        );
    }
    Ok(())
}
