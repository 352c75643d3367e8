//! Per-second rates measured from counters: each reading of a counter
//! (every stats period, with the seconds since the last one, read from the
//! broker's `Clock` by the caller) gives the rate over that window, as
//! Pulsar's stats report `msgRateOut` and the like.

/// The rate of one counter over its last window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RateMeter {
    last: u64,
    rate: f64,
}

impl RateMeter {
    /// The counter reads `total` after `secs` seconds: the rate over that
    /// window. A zero window keeps the previous rate.
    pub(crate) fn tick(&mut self, total: u64, secs: f64) {
        if secs > 0.0 {
            self.rate = total.saturating_sub(self.last) as f64 / secs;
        }
        self.last = total;
    }

    /// Per second over the last window.
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }
}

/// Messages and bytes per second of a pair of counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct FlowMeter {
    pub msgs: RateMeter,
    pub bytes: RateMeter,
}

impl FlowMeter {
    pub(crate) fn tick(&mut self, msgs: u64, bytes: u64, secs: f64) {
        self.msgs.tick(msgs, secs);
        self.bytes.tick(bytes, secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_the_counter_change_over_the_window() {
        let mut m = RateMeter::default();
        m.tick(100, 10.0);
        assert_eq!(m.rate(), 10.0);
        m.tick(100, 5.0);
        assert_eq!(m.rate(), 0.0);
        m.tick(150, 0.0);
        assert_eq!(m.rate(), 0.0, "a zero window keeps the previous rate");
        m.tick(160, 2.0);
        assert_eq!(m.rate(), 5.0, "measured from the last reading");
    }
}
