//! The command line of `flashmla`, parsed by hand (the library's users should not compile an argument
//! parser) and checked completely before any device is opened.

use flashmla::DecodeKernel;
use flashmla_harness::bench::Bencher;
use std::path::PathBuf;

/// Exit status for a machine without a usable GPU (no driver, no device, a device older than sm_80):
/// sysexits' `EX_UNAVAILABLE`, so scripts can tell "cannot run here" from a failure.
pub const EXIT_NO_GPU: u8 = 69;
/// Exit status for a command line that cannot be run.
pub const EXIT_USAGE: u8 = 2;

pub const HELP: &str = "\
flashmla: FlashMLA's MLA decode kernels in pure Rust: device info, checks and benchmarks

Usage: flashmla [GLOBAL OPTIONS] <COMMAND> [OPTIONS]

Commands:
  info    Driver and device, and the registers / shared memory of every kernel in the embedded PTX
  bench   Time the decode (split + combine, metadata reused) on FlashMLA's grid and print a table
  check   Run the correctness sweep against the f64 CPU reference

Global options (before or after the command):
  --device <N>                      CUDA device ordinal [default: 0]
  --module <sm90a|sm80>             PTX module [default: the best for the device]
  --kernel <auto|hopper|portable>   split-KV kernel [default: auto, the best for the device]
  -h, --help                        this help (`flashmla <COMMAND> --help` for the command's options)
  -V, --version                     the version

Exit status: 0 success, 1 failure, 2 bad command line, 69 no usable GPU (no driver, no device).
";

pub const BENCH_HELP: &str = "\
Time the decode (split + combine, metadata reused) on FlashMLA's grid and print a table

Usage: flashmla bench [OPTIONS]

Options (filters of FlashMLA's grid, unless --one):
  --b <N>               only shapes with this batch size
  --s-q <N>             only shapes with this many query tokens
  --s-k <N>             only shapes with this mean KV length
  --h-q <N>             only shapes with this many query heads
  --h-kv <N>            KV heads [default: 1, as FlashMLA's grid]
  --varlen <true|false> only varlen (true) or fixed-length (false) shapes
  --no-causal           non-causal instead of FlashMLA's causal
  --one                 benchmark exactly the shape --b --s-q --s-k --h-q (all four required;
                        --h-kv, --varlen, --no-causal apply) instead of filtering the grid
  --dtype <bf16|fp16>   input type [default: bf16]
  --sm-parts <N>        cut every batch into N work lists (1..=65535) instead of FlashMLA's formula
  --step                also time the whole decode step (metadata + decode + combine), launched
                        eagerly and replayed from a CUDA graph
  --iters <N>           timed repetitions per shape, median reported [default: 30]
  --csv <FILE>          also write the rows as CSV
  --json <FILE>         also write the rows and ceilings as JSON
  --markdown <FILE>     also write the table as Markdown (with both floors per shape), as in BENCHMARKS.md
  --flashmla-csv <FILE> FlashMLA's times from this run on this GPU (the CSV b,s_q,s_k,h_q,varlen,
                        total_seqlen_k,us of the team's FlashMLA anchor script); repeat per FlashMLA
                        version: the fastest per shape is the bar of the 'vs FlashMLA' column, and a file
                        timed on other lengths is an error. Without it that column stays empty: absolute
                        times move ~15% between runs, only a ratio measured side by side is a claim
";

pub const CHECK_HELP: &str = "\
Run the correctness sweep against the f64 CPU reference

Usage: flashmla check [OPTIONS]

Options:
  --suite <flashmla|head|corner|all>  which cases [default: all]: FlashMLA's 48-case sweep, a random draw
                                      of FlashMLA HEAD's grid, corner cases, or all three
  --head-cases <N>                    cases to draw from HEAD's grid [default: 60]
  --seed <N>                          seed [default: the clock; printed so a failure can be replayed]
  --dtype <bf16|fp16>                 input type of FlashMLA's sweep [default: bf16]
";

/// The parsed command line.
pub struct Cli {
    /// CUDA device ordinal.
    pub device: usize,
    /// PTX module: the best for the device (`None`), or a forced one.
    pub module: Option<Module>,
    /// Split-KV kernel.
    pub kernel: Kernel,
    /// What to do.
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Module {
    Sm90a,
    Sm80,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kernel {
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

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dtype {
    Bf16,
    Fp16,
}

/// Which cases `flashmla check` runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Suite {
    Flashmla,
    Head,
    Corner,
    All,
}

pub enum Command {
    Info,
    Bench(BenchArgs),
    Check(CheckArgs),
}

#[derive(Debug, PartialEq)]
pub struct BenchArgs {
    pub b: Option<usize>,
    pub s_q: Option<usize>,
    pub s_k: Option<usize>,
    pub h_q: Option<usize>,
    pub h_kv: usize,
    pub varlen: Option<bool>,
    pub no_causal: bool,
    pub one: bool,
    pub dtype: Dtype,
    pub iters: usize,
    pub csv: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub flashmla_csv: Vec<PathBuf>,
    pub sm_parts: Option<usize>,
    pub step: bool,
}

#[derive(Debug, PartialEq)]
pub struct CheckArgs {
    pub suite: Suite,
    pub head_cases: usize,
    pub seed: Option<u64>,
    pub dtype: Dtype,
}

/// Why the command line does not lead to a run.
#[derive(Debug, PartialEq)]
pub enum Stop {
    /// `--help`: print this and exit 0.
    Help(&'static str),
    /// `--version`.
    Version,
    /// A bad command line: print this and exit 2.
    Usage(String),
}

fn usage(msg: impl Into<String>) -> Stop {
    Stop::Usage(msg.into())
}

/// Parses `args` (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, Stop> {
    let mut args = args.into_iter();
    let mut cli = Cli {
        device: 0,
        module: None,
        kernel: Kernel::Auto,
        command: Command::Info,
    };
    let mut command: Option<&str> = None;
    let mut bench = BenchArgs {
        b: None,
        s_q: None,
        s_k: None,
        h_q: None,
        h_kv: 1,
        varlen: None,
        no_causal: false,
        one: false,
        dtype: Dtype::Bf16,
        iters: Bencher::DEFAULT_ITERS,
        csv: None,
        json: None,
        markdown: None,
        flashmla_csv: Vec::new(),
        sm_parts: None,
        step: false,
    };
    let mut check = CheckArgs {
        suite: Suite::All,
        head_cases: 60,
        seed: None,
        dtype: Dtype::Bf16,
    };
    while let Some(arg) = args.next() {
        // `--flag=value` and `--flag value` both work.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, Stop> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| usage(format!("{flag} needs a value ({what})")))
        };
        match (command, flag.as_str()) {
            (_, "-h" | "--help") => {
                return Err(Stop::Help(match command {
                    Some("bench") => BENCH_HELP,
                    Some("check") => CHECK_HELP,
                    _ => HELP,
                }))
            }
            (_, "-V" | "--version") => return Err(Stop::Version),
            (_, "--device") => cli.device = number(&flag, &value("an ordinal")?)?,
            (_, "--module") => {
                cli.module = Some(choice(
                    &flag,
                    &value("sm90a or sm80")?,
                    &[("sm90a", Module::Sm90a), ("sm80", Module::Sm80)],
                )?)
            }
            (_, "--kernel") => {
                cli.kernel = choice(
                    &flag,
                    &value("auto, hopper or portable")?,
                    &[
                        ("auto", Kernel::Auto),
                        ("hopper", Kernel::Hopper),
                        ("portable", Kernel::Portable),
                    ],
                )?
            }
            (None, "info" | "bench" | "check") => {
                command = Some(match flag.as_str() {
                    "info" => "info",
                    "bench" => "bench",
                    _ => "check",
                })
            }
            (Some("bench"), "--b") => bench.b = Some(number(&flag, &value("a batch size")?)?),
            (Some("bench"), "--s-q") => bench.s_q = Some(number(&flag, &value("a count")?)?),
            (Some("bench"), "--s-k") => bench.s_k = Some(number(&flag, &value("a length")?)?),
            (Some("bench"), "--h-q") => bench.h_q = Some(number(&flag, &value("a count")?)?),
            (Some("bench"), "--h-kv") => bench.h_kv = number(&flag, &value("a count")?)?,
            (Some("bench"), "--varlen") => {
                bench.varlen = Some(choice(
                    &flag,
                    &value("true or false")?,
                    &[("true", true), ("false", false)],
                )?)
            }
            (Some("bench"), "--no-causal") => bench.no_causal = true,
            (Some("bench"), "--step") => bench.step = true,
            (Some("bench"), "--one") => bench.one = true,
            (Some("bench"), "--sm-parts") => {
                let parts: usize = number(&flag, &value("a count")?)?;
                // The library's own check of a part count, before any device is opened.
                flashmla::DecodeShape::new(1, 1, 1, 1)
                    .and_then(|shape| shape.with_num_sm_parts(parts))
                    .map_err(|e| usage(format!("{flag}: {e}")))?;
                bench.sm_parts = Some(parts)
            }
            (Some("bench"), "--iters") => bench.iters = number(&flag, &value("a count")?)?,
            (Some("bench"), "--csv") => bench.csv = Some(value("a file")?.into()),
            (Some("bench"), "--json") => bench.json = Some(value("a file")?.into()),
            (Some("bench"), "--markdown") => bench.markdown = Some(value("a file")?.into()),
            (Some("bench"), "--flashmla-csv") => bench.flashmla_csv.push(value("a file")?.into()),
            (Some("bench"), "--dtype") => bench.dtype = dtype(&flag, &value("bf16 or fp16")?)?,
            (Some("check"), "--dtype") => check.dtype = dtype(&flag, &value("bf16 or fp16")?)?,
            (Some("check"), "--suite") => {
                check.suite = choice(
                    &flag,
                    &value("flashmla, head, corner or all")?,
                    &[
                        ("flashmla", Suite::Flashmla),
                        ("head", Suite::Head),
                        ("corner", Suite::Corner),
                        ("all", Suite::All),
                    ],
                )?
            }
            (Some("check"), "--head-cases") => {
                check.head_cases = number(&flag, &value("a count")?)?
            }
            (Some("check"), "--seed") => check.seed = Some(number(&flag, &value("a number")?)?),
            (None, other) => {
                return Err(usage(format!(
                    "unknown command or option {other:?} (commands: info, bench, check; see --help)"
                )))
            }
            (Some(cmd), other) => {
                return Err(usage(format!(
                    "unknown option {other:?} for `flashmla {cmd}` (see flashmla {cmd} --help)"
                )))
            }
        }
    }
    cli.command = match command {
        Some("info") => Command::Info,
        Some("bench") => Command::Bench(checked_bench(bench)?),
        Some("check") => Command::Check(checked_check(check)?),
        _ => return Err(usage("no command given (info, bench or check; see --help)")),
    };
    Ok(cli)
}

fn checked_bench(a: BenchArgs) -> Result<BenchArgs, Stop> {
    if a.one {
        let missing: Vec<&str> = [
            ("--b", a.b),
            ("--s-q", a.s_q),
            ("--s-k", a.s_k),
            ("--h-q", a.h_q),
        ]
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| *name)
        .collect();
        if !missing.is_empty() {
            return Err(usage(format!(
                "--one benchmarks exactly one shape: it also needs {}",
                missing.join(" ")
            )));
        }
    }
    if a.iters == 0 {
        return Err(usage("--iters must be at least 1"));
    }
    Ok(a)
}

fn checked_check(a: CheckArgs) -> Result<CheckArgs, Stop> {
    if a.head_cases == 0 && a.suite == Suite::Head {
        return Err(usage("--suite head with --head-cases 0 runs nothing"));
    }
    Ok(a)
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, Stop> {
    text.parse()
        .map_err(|_| usage(format!("{flag}: {text:?} is not a non-negative integer")))
}

fn choice<T: Copy>(flag: &str, text: &str, options: &[(&str, T)]) -> Result<T, Stop> {
    options
        .iter()
        .find(|(name, _)| *name == text)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            usage(format!(
                "{flag}: {text:?} is not one of {}",
                names.join(", ")
            ))
        })
}

fn dtype(flag: &str, text: &str) -> Result<Dtype, Stop> {
    choice(flag, text, &[("bf16", Dtype::Bf16), ("fp16", Dtype::Fp16)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Result<Cli, Stop> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    fn bench_args(line: &str) -> BenchArgs {
        match run(line) {
            Ok(Cli {
                command: Command::Bench(a),
                ..
            }) => a,
            Ok(_) => panic!("{line}: not a bench command"),
            Err(e) => panic!("{line}: {e:?}"),
        }
    }

    #[test]
    fn global_options_anywhere_and_both_value_forms() {
        let cli = run("--device 1 bench --kernel=portable --module sm80 --b=64").unwrap();
        assert_eq!(cli.device, 1);
        assert_eq!(cli.kernel, Kernel::Portable);
        assert_eq!(cli.module, Some(Module::Sm80));
        assert!(matches!(
            cli.command,
            Command::Bench(BenchArgs { b: Some(64), .. })
        ));
    }

    #[test]
    fn bench_defaults_and_filters() {
        let a = bench_args("bench");
        assert_eq!(
            (a.h_kv, a.iters, a.dtype),
            (1, Bencher::DEFAULT_ITERS, Dtype::Bf16)
        );
        assert_eq!((a.one, a.no_causal, a.varlen), (false, false, None));
        let a = bench_args(
            "bench --flashmla-csv a.csv --flashmla-csv=b.csv --s-q 2 --varlen true --no-causal --dtype fp16 --csv x.csv",
        );
        assert_eq!(
            a.flashmla_csv,
            vec![PathBuf::from("a.csv"), PathBuf::from("b.csv")]
        );
        assert_eq!((a.s_q, a.varlen, a.no_causal), (Some(2), Some(true), true));
        assert_eq!(
            (a.dtype, a.csv),
            (Dtype::Fp16, Some(PathBuf::from("x.csv")))
        );
    }

    #[test]
    fn sm_parts_is_a_grid_z_extent() {
        assert_eq!(bench_args("bench").sm_parts, None);
        assert_eq!(bench_args("bench --sm-parts 16").sm_parts, Some(16));
        assert!(!bench_args("bench").step && bench_args("bench --step").step);
        for bad in [
            "bench --sm-parts 0",
            "bench --sm-parts 65536",
            "bench --sm-parts x",
        ] {
            assert!(matches!(run(bad), Err(Stop::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn one_needs_the_whole_shape() {
        match run("bench --one --b 4 --h-q 16") {
            Err(Stop::Usage(msg)) => assert!(msg.contains("--s-q --s-k"), "{msg}"),
            other => panic!("{:?}", other.err()),
        }
        let a = bench_args("bench --one --b 4 --s-q 2 --s-k 300 --h-q 16");
        assert_eq!(
            (a.b, a.s_q, a.s_k, a.h_q),
            (Some(4), Some(2), Some(300), Some(16))
        );
    }

    #[test]
    fn check_suite_is_one_of_four() {
        assert!(matches!(
            run("check --suite corner").map(|c| c.command),
            Ok(Command::Check(CheckArgs {
                suite: Suite::Corner,
                ..
            }))
        ));
        match run("check --suite nosuch") {
            Err(Stop::Usage(msg)) => assert!(msg.contains("flashmla, head, corner, all"), "{msg}"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn bad_lines_are_usage_errors() {
        for line in [
            "",
            "frobnicate",
            "bench --suite all",
            "check --b 4",
            "bench --b",
            "bench --b four",
            "bench --b -1",
            "bench --iters 0",
            "--kernel fast info",
            "bench --varlen maybe",
        ] {
            assert!(
                matches!(run(line), Err(Stop::Usage(_))),
                "{line:?} was accepted"
            );
        }
        assert_eq!(run("bench --help").err(), Some(Stop::Help(BENCH_HELP)));
        assert_eq!(run("--help").err(), Some(Stop::Help(HELP)));
        assert_eq!(run("check -V").err(), Some(Stop::Version));
    }
}
