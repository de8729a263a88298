//! A minimal test runner for checks that can be *skipped* (no GPU, no ptxas): libtest can only pass or
//! fail a test, and a check that could not run must never be counted as passed.
//!
//! Each case returns an [`Outcome`]; the run ends with the line `N passed, N failed, N skipped` and exits
//! non-zero if anything failed. Arguments that do not start with `-` filter cases by substring. A test
//! binary (`harness = false`) ends with `runner::run("suite", flashmla_harness::cases![a, b])`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// Result of one case.
pub enum Outcome {
    /// The check ran and passed (with what it measured).
    Pass(String),
    /// The check ran and failed (why).
    Fail(String),
    /// The check could not run here (why: no GPU, no ptxas, ...).
    Skip(String),
}

pub use Outcome::{Fail, Pass, Skip};

/// A named case.
pub type Case = (&'static str, fn() -> Outcome);

/// `cases![f, g]` → `&[("f", f), ("g", g)]`: each case ([`runner::Case`](crate::runner::Case)) named
/// after its function.
#[macro_export]
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), $case as fn() -> $crate::runner::Outcome)),*]
    };
}

/// Turns a `Result` into a pass (with its message) or a failure.
pub fn check<E: std::fmt::Display>(r: Result<String, E>) -> Outcome {
    match r {
        Ok(msg) => Pass(msg),
        Err(e) => Fail(e.to_string()),
    }
}

/// Runs the cases and exits the process with the summary status.
pub fn run(suite: &str, cases: &[Case]) -> ! {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    println!("running {suite}");
    for (name, case) in cases {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(case)).unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            Fail(format!("panicked: {msg}"))
        });
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Pass(msg) => {
                passed += 1;
                println!("PASS {name} ({secs:.2} s) {msg}");
            }
            Fail(msg) => {
                failed += 1;
                println!("FAIL {name} ({secs:.2} s) {msg}");
            }
            Skip(msg) => {
                skipped += 1;
                println!("SKIP {name}: skipped: {msg}");
            }
        }
    }
    println!("{suite}: {passed} passed, {failed} failed, {skipped} skipped");
    if passed + failed + skipped == 0 {
        // A filter that selects nothing checked nothing: not a success.
        println!("{suite}: no case matches {filters:?}");
        std::process::exit(1);
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
