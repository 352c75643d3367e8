//! The standard `process_*` metrics (as Prometheus' client libraries export
//! them) from `/proc/self` on Linux: CPU time, resident and virtual memory,
//! open and maximum file descriptors, start time. Elsewhere, or when `/proc`
//! cannot be read, the series are left out.

use std::fmt::Write as _;

/// What `/proc/self` says now.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
}

/// The fields of `/proc/self/stat` after the command name, parsed: (utime,
/// stime, starttime in clock ticks, vsize in bytes, rss in pages).
fn parse_stat(stat: &str) -> Option<(u64, u64, u64, u64, u64)> {
    // The command name (in parentheses) may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, so index 11.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((field(11)?, field(12)?, field(19)?, field(20)?, field(21)?))
}

/// `btime` of `/proc/stat`: when the system booted (s since the epoch).
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn sample() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (utime, stime, start_ticks, vsize, rss_pages) = parse_stat(&stat)?;
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_boot_time(&s))?;
    Some(Sample {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_bytes: rss_pages.saturating_mul(rustix::param::page_size() as u64),
        virtual_bytes: vsize,
        start_time_seconds: boot as f64 + start_ticks as f64 / ticks,
    })
}

/// This process's CPU time so far (user and system), in seconds.
pub(crate) fn cpu_seconds() -> Option<f64> {
    sample().map(|s| s.cpu_seconds)
}

/// This process's resident memory, in bytes.
pub(crate) fn resident_bytes() -> Option<u64> {
    sample().map(|s| s.resident_bytes)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// The machine's memory, in bytes.
pub(crate) fn total_memory_bytes() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Open file descriptors: the entries of `/proc/self/fd`.
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

fn gauge(out: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {v}");
}

/// Appends the `process_*` series that can be read.
pub(crate) fn render(out: &mut String) {
    if let Some(s) = sample() {
        gauge(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds",
            s.cpu_seconds,
        );
        gauge(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, in bytes",
            s.resident_bytes,
        );
        gauge(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, in bytes",
            s.virtual_bytes,
        );
        gauge(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the epoch, in seconds",
            s.start_time_seconds,
        );
    }
    if let Some(n) = open_fds() {
        gauge(out, "process_open_fds", "gauge", "Open file descriptors", n);
    }
    if let Some(n) = crate::accept::open_files_limit() {
        gauge(out, "process_max_fds", "gauge", "The open-file limit", n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "4242 (kilo nova) (x)) S 1 4242 4242 0 -1 4194304 100 0 0 0 \
                    250 50 0 0 20 0 8 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((250, 50, 123456, 987654321, 2048)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
    }

    #[test]
    fn mem_total_is_read_in_kilobytes() {
        assert_eq!(
            parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn this_process_has_a_sample_on_linux() {
        if cfg!(target_os = "linux") {
            let s = sample().expect("/proc/self is readable on Linux");
            assert!(
                s.resident_bytes > 0 && s.start_time_seconds > 1_000_000_000.0,
                "{s:?}"
            );
            assert!(open_fds().is_some_and(|n| n > 0));
        }
    }
}
