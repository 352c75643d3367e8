//! The Prometheus text exposition (format 0.0.4) of the controller's and
//! the proxies' metrics: plain counters and gauges kept in atomics.

use std::fmt::Write as _;

/// A metric's type line.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One unlabelled metric: name, help, value, type.
pub type Row<'a> = (&'a str, &'a str, u64, Kind);

/// Appends `rows` to `out`.
pub fn render(out: &mut String, rows: &[Row<'_>]) {
    for (name, help, value, kind) in rows {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}
