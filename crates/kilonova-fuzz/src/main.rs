//! `kilonova-fuzz`: runs the fuzz targets for a time or a number of inputs,
//! prints progress and a summary, and on a failure the command that replays
//! it (`scripts/fuzz` wraps this binary in a release build).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;

use kilonova_fuzz::driver::{hex, Budget, Fuzzer, Outcome};
use kilonova_fuzz::targets;

#[derive(Parser, Debug)]
#[command(about = "Fuzz Kilonova's decoders (network and disk bytes) on stable Rust")]
struct Args {
    /// Target to run (repeatable); default: all of them.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Total time, split evenly between the targets.
    #[arg(long, conflicts_with = "iterations")]
    seconds: Option<f64>,
    /// Inputs per target.
    #[arg(long)]
    iterations: Option<u64>,
    /// Seed of the corpus and of every input; default: from the clock (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Run only this iteration's input (with --target and --seed: replays a failure).
    #[arg(long, requires = "seed")]
    iteration: Option<u64>,
    /// Run the input in this file (raw bytes, or hex text if it ends in .hex).
    #[arg(long, conflicts_with = "iteration")]
    input: Option<PathBuf>,
    /// Where failing inputs are written.
    #[arg(long, default_value = "target/fuzz-failures")]
    failures: PathBuf,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kilonova-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_input(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "hex") {
        let text = String::from_utf8(bytes).context("a .hex file is text")?;
        let text: String = text.split_whitespace().collect();
        return (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .context("not hex")
            })
            .collect();
    }
    Ok(bytes)
}

fn run(args: Args) -> anyhow::Result<bool> {
    if args.list {
        for n in targets::NAMES {
            println!("{n}");
        }
        return Ok(true);
    }
    let names: Vec<String> = if args.targets.is_empty() || args.targets.iter().any(|t| t == "all") {
        targets::NAMES.iter().map(|n| n.to_string()).collect()
    } else {
        args.targets.clone()
    };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });

    if args.iteration.is_some() || args.input.is_some() {
        anyhow::ensure!(
            names.len() == 1,
            "replaying an input needs exactly one --target"
        );
        let mut f = Fuzzer::new(targets::make(&names[0])?, seed);
        let (input, iteration) = match (&args.input, args.iteration) {
            (Some(path), _) => (read_input(path)?, 0),
            (None, Some(i)) => (f.input(i), i),
            (None, None) => unreachable!("checked above"),
        };
        println!("{}: {} bytes: {}", f.name(), input.len(), hex(&input));
        return Ok(match f.run_input(&input, iteration) {
            Ok(usage) => {
                println!(
                    "ok (peak {} bytes, largest allocation {} bytes)",
                    usage.peak_bytes, usage.largest_bytes
                );
                true
            }
            Err(message) => {
                println!("FAILED: {message}");
                false
            }
        });
    }

    let budget = match (args.seconds, args.iterations) {
        (Some(s), _) => Budget::time(Duration::from_secs_f64(s / names.len() as f64)),
        (None, Some(n)) => Budget::iterations(n),
        (None, None) => Budget::iterations(10_000),
    };
    println!(
        "kilonova-fuzz: seed {seed}, targets {}, {}",
        names.join(" "),
        match (budget.time, budget.iterations) {
            (Some(t), _) => format!("{:.0} s each", t.as_secs_f64()),
            (None, Some(n)) => format!("{n} inputs each"),
            _ => String::new(),
        }
    );
    let mut outcomes: Vec<Outcome> = Vec::new();
    for name in &names {
        let mut f = Fuzzer::new(targets::make(name)?, seed);
        let out = f.run(0, budget, Duration::from_secs(10), &mut |o| {
            println!(
                "  {:<10} {:>11} inputs  {:>9.0}/s  peak {} KiB",
                o.target,
                o.iterations,
                o.per_second(),
                o.max_peak_bytes >> 10
            );
        });
        match &out.failure {
            Some(failure) => {
                println!("{failure}");
                std::fs::create_dir_all(&args.failures).ok();
                let path = args.failures.join(format!(
                    "{}-{}-{}.bin",
                    failure.target, failure.seed, failure.iteration
                ));
                if std::fs::write(&path, &failure.input).is_ok() {
                    println!("  input saved to {}", path.display());
                }
            }
            None => println!(
                "{:<10} ok: {} inputs in {:.1} s ({:.0}/s), most memory for one input {} KiB",
                out.target,
                out.iterations,
                out.elapsed.as_secs_f64(),
                out.per_second(),
                out.max_peak_bytes >> 10
            ),
        }
        outcomes.push(out);
    }
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let total: u64 = outcomes.iter().map(|o| o.iterations).sum();
    println!(
        "kilonova-fuzz: {total} inputs over {} targets, {failed} failed (seed {seed})",
        outcomes.len()
    );
    Ok(failed == 0)
}
