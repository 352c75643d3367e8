//! Inputs the fuzzer once failed on, run again through their targets (panics
//! and the allocation limit included). `tests/regressions/<target>-<what>.hex`.

use kilonova_fuzz::driver::Fuzzer;
use kilonova_fuzz::targets;

fn unhex(text: &str) -> Vec<u8> {
    let text: String = text.split_whitespace().collect();
    (0..text.len())
        .step_by(2)
        .filter_map(|i| text.get(i..i + 2))
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}

#[test]
fn every_input_that_once_failed_now_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let Some(target) = targets::NAMES
            .iter()
            .find(|t| name.starts_with(&format!("{t}-")))
        else {
            failures.push(format!("{name}: names no target"));
            continue;
        };
        let input = unhex(&std::fs::read_to_string(path).unwrap_or_default());
        let target = match targets::make(target) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut fuzzer = Fuzzer::new(target, 0);
        if let Err(e) = fuzzer.run_input(&input, 0) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
