//! How much a connection asks of each socket read.
//!
//! Each read costs a system call and a turn of the connection's loop, so a
//! client that keeps the socket full (a thousand unbatched sends in flight)
//! is read in large pieces. A quiet one is read in small pieces: the frames'
//! payloads are slices of the read buffer, and an entry cached for a
//! subscription keeps its whole allocation alive, so a large buffer per
//! small message would hold far more memory than the cache counts.

/// The smallest (and first) space a read is given.
pub(super) const MIN: usize = 8 << 10;
/// The largest.
pub(super) const MAX: usize = 64 << 10;

/// The space the next read is given: doubled after a read that filled all
/// it was given (more is likely waiting), halved after one that filled less
/// than a quarter, kept otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> Self {
        Self(MIN)
    }
}

impl ReadSize {
    /// Bytes to reserve before a read.
    pub(super) fn bytes(self) -> usize {
        self.0
    }

    /// Whether an emptied read buffer of `capacity` bytes is kept: one much
    /// larger than reads now need (after a big frame, or once a burst read
    /// in large pieces ended) is dropped.
    pub(super) fn keeps(self, capacity: usize) -> bool {
        capacity <= 2 * self.0
    }

    /// After a read that was given `space` bytes and returned `read`.
    pub(super) fn after_read(&mut self, space: usize, read: usize) {
        if read >= space {
            self.0 = (self.0 * 2).min(MAX);
        } else if read < space / 4 {
            self.0 = (self.0 / 2).max(MIN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_reads_grow_the_size_to_the_most_and_sparse_ones_shrink_it_to_the_least() {
        let mut size = ReadSize::default();
        assert_eq!(size.bytes(), MIN);
        let mut seen = vec![size.bytes()];
        for _ in 0..6 {
            size.after_read(size.bytes(), size.bytes());
            seen.push(size.bytes());
        }
        assert_eq!(seen, [MIN, 2 * MIN, 4 * MIN, MAX, MAX, MAX, MAX]);
        // Half full: a steady flow keeps the size it has.
        size.after_read(MAX, MAX / 2);
        assert_eq!(size.bytes(), MAX);
        let mut seen = vec![];
        for _ in 0..5 {
            size.after_read(MAX, 100);
            seen.push(size.bytes());
        }
        assert_eq!(seen, [MAX / 2, MAX / 4, MIN, MIN, MIN]);
        // A quiet connection keeps a buffer of two reads, not a burst's.
        assert!(size.keeps(2 * MIN));
        assert!(!size.keeps(MAX));
    }

    #[test]
    fn a_burst_keeps_its_buffer() {
        let mut size = ReadSize::default();
        for _ in 0..3 {
            size.after_read(size.bytes(), size.bytes());
        }
        assert!(size.keeps(2 * MAX));
        assert!(!size.keeps(5 << 20), "a big frame's buffer is dropped");
    }
}
