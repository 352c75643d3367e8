//! Runs a target: builds its corpus of valid inputs from the seed, then for
//! each iteration derives an input from (seed, iteration) alone — a fresh
//! generated one, or a corpus entry mutated and sometimes re-checksummed —
//! runs it with panics caught and allocations counted, and stops at the first
//! failure with what reproduces it.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::alloc;
use crate::mutate::{self, Input};
use crate::rng::{mix, Rng};
use crate::targets::{self, Target};

/// Valid inputs generated before mutation starts.
pub const CORPUS_SIZE: usize = 64;
/// No single allocation of a counted run may exceed this (a decoder asking for
/// it trusted a length field); the process aborts with the case printed.
pub const HARD_LIMIT_BYTES: usize = 256 << 20;

/// How long to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Budget {
    pub iterations: Option<u64>,
    pub time: Option<Duration>,
}

impl Budget {
    pub fn iterations(n: u64) -> Self {
        Budget {
            iterations: Some(n),
            time: None,
        }
    }

    pub fn time(t: Duration) -> Self {
        Budget {
            iterations: None,
            time: Some(t),
        }
    }
}

/// A broken invariant: a panic, or memory beyond the target's limit.
#[derive(Clone, Debug)]
pub struct Failure {
    pub target: &'static str,
    pub seed: u64,
    pub iteration: u64,
    pub message: String,
    pub input: Vec<u8>,
}

impl Failure {
    /// The command that runs the failing input again.
    pub fn reproduce(&self) -> String {
        format!(
            "scripts/fuzz --target {} --seed {} --iteration {}",
            self.target, self.seed, self.iteration
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target {} failed at iteration {} of seed {}: {}\n  input ({} bytes): {}\n  reproduce: {}",
            self.target,
            self.iteration,
            self.seed,
            self.message,
            self.input.len(),
            hex(&self.input[..self.input.len().min(512)]),
            self.reproduce()
        )
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub target: &'static str,
    pub seed: u64,
    pub iterations: u64,
    pub elapsed: Duration,
    /// The most bytes one input had live at once, and its size.
    pub max_peak_bytes: usize,
    pub failure: Option<Failure>,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.iterations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

thread_local! {
    static CAPTURING: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// While a target runs, a panic's message is kept for the report instead of
/// printed; elsewhere panics print as usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let was = alloc::pause();
            let captured = CAPTURING.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let what = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into());
                        let at = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        *slot = format!("panicked{at}: {what}");
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                default(info);
            }
            alloc::resume(was);
        }));
    });
}

/// One target with its corpus.
pub struct Fuzzer {
    target: Box<dyn Target>,
    index: usize,
    seed: u64,
    corpus: Vec<Input>,
}

impl Fuzzer {
    pub fn new(mut target: Box<dyn Target>, seed: u64) -> Self {
        install_panic_hook();
        alloc::set_hard_limit(HARD_LIMIT_BYTES);
        let index = targets::NAMES
            .iter()
            .position(|n| *n == target.name())
            .unwrap_or(usize::MAX);
        let mut rng = Rng::new(seed);
        let corpus = (0..CORPUS_SIZE)
            .map(|_| target.generate(&mut rng))
            .collect();
        Fuzzer {
            target,
            index,
            seed,
            corpus,
        }
    }

    pub fn name(&self) -> &'static str {
        self.target.name()
    }

    /// The input of `iteration`: a function of the seed and the iteration only.
    pub fn input(&mut self, iteration: u64) -> Vec<u8> {
        let mut rng = Rng::new(mix(self.seed) ^ mix(iteration.wrapping_add(1)));
        if rng.below(1000) < self.target.fresh_per_mille() as usize {
            return self.target.generate(&mut rng).bytes;
        }
        let Some(mut input) = rng.pick(&self.corpus).cloned() else {
            return Vec::new();
        };
        if !(rng.chance(1, 3) && self.target.mutate_structured(&mut rng, &mut input)) {
            mutate::mutate(&mut rng, &mut input, &self.corpus);
        }
        if rng.chance(1, 2) {
            self.target.fix_up(&mut input.bytes);
        }
        input.bytes
    }

    /// Runs one input; the error says what broke.
    pub fn run_input(&mut self, input: &[u8], iteration: u64) -> Result<alloc::Usage, String> {
        alloc::set_case(self.index, self.seed, iteration);
        CAPTURING.with(|c| *c.borrow_mut() = Some(String::new()));
        let target = &mut self.target;
        alloc::start();
        let result = panic::catch_unwind(AssertUnwindSafe(|| target.run(input)));
        let usage = alloc::stop();
        let message = CAPTURING
            .with(|c| c.borrow_mut().take())
            .unwrap_or_default();
        if result.is_err() {
            return Err(message);
        }
        let limit = self.target.alloc_limit(input.len());
        if usage.peak_bytes > limit {
            return Err(format!(
                "allocated {} bytes at once (largest single request {}) for an input of {} bytes; the limit is {limit}",
                usage.peak_bytes,
                usage.largest_bytes,
                input.len()
            ));
        }
        Ok(usage)
    }

    /// Runs iterations from `first` until the budget is spent or an input
    /// fails; `progress` is called about every `every`.
    pub fn run(
        &mut self,
        first: u64,
        budget: Budget,
        every: Duration,
        progress: &mut dyn FnMut(&Outcome),
    ) -> Outcome {
        let start = Instant::now();
        let mut last_report = start;
        let mut out = Outcome {
            target: self.name(),
            seed: self.seed,
            iterations: 0,
            elapsed: Duration::ZERO,
            max_peak_bytes: 0,
            failure: None,
        };
        let mut iteration = first;
        loop {
            if budget.iterations.is_some_and(|n| out.iterations >= n) {
                break;
            }
            // The clock is read every 64 inputs: most inputs take microseconds.
            if out.iterations % 64 == 0 {
                let now = Instant::now();
                if budget.time.is_some_and(|t| now - start >= t) {
                    break;
                }
                if now - last_report >= every {
                    last_report = now;
                    out.elapsed = now - start;
                    progress(&out);
                }
            }
            let input = self.input(iteration);
            match self.run_input(&input, iteration) {
                Ok(usage) => out.max_peak_bytes = out.max_peak_bytes.max(usage.peak_bytes),
                Err(message) => {
                    out.failure = Some(Failure {
                        target: self.name(),
                        seed: self.seed,
                        iteration,
                        message,
                        input,
                    });
                    out.iterations += 1;
                    break;
                }
            }
            out.iterations += 1;
            iteration += 1;
        }
        out.elapsed = start.elapsed();
        out
    }
}
