//! A compact set of positions stored as closed ranges within a segment.
//!
//! A cursor keeps its individually acknowledged entries here. Ranges never
//! span segments: the set does not know how many entries a segment holds, so
//! `(s, last)` and `(s + 1, 0)` stay separate ranges; the cursor folds them into
//! its mark-delete position, which does know.

use std::collections::BTreeMap;

use crate::position::Position;

/// A set of positions as disjoint, non-adjacent closed ranges `[start, end]` of one segment each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (inclusive), same segment.
    ranges: BTreeMap<Position, Position>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of disjoint ranges (what persisting the set costs).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of positions in the set.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e.entry - s.entry + 1).sum()
    }

    pub fn contains(&self, p: Position) -> bool {
        self.ranges
            .range(..=p)
            .next_back()
            .is_some_and(|(s, e)| s.segment == p.segment && p.entry <= e.entry)
    }

    /// Adds one position.
    pub fn insert(&mut self, p: Position) {
        self.insert_range(p, p);
    }

    /// Adds `[start, end]`; both in the same segment, `start <= end`.
    pub fn insert_range(&mut self, start: Position, end: Position) {
        debug_assert!(start.segment == end.segment && start.entry <= end.entry);
        if start.segment != end.segment || start.entry > end.entry {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // Merge with a range that starts before and touches or overlaps.
        if let Some((&s, &e)) = self.ranges.range(..=lo).next_back() {
            if s.segment == lo.segment && e.entry.saturating_add(1) >= lo.entry {
                lo = s;
                hi = hi.max(e);
                self.ranges.remove(&s);
            }
        }
        // Merge with ranges that start inside or right after.
        let next_after = Position::new(hi.segment, hi.entry.saturating_add(1));
        let absorbed: Vec<(Position, Position)> = self
            .ranges
            .range(lo..=next_after)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in absorbed {
            if s.segment == hi.segment {
                hi = hi.max(e);
                self.ranges.remove(&s);
            }
        }
        self.ranges.insert(lo, hi);
    }

    /// Removes every position `<= p`.
    pub fn remove_up_to(&mut self, p: Position) {
        let below: Vec<(Position, Position)> =
            self.ranges.range(..=p).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in below {
            self.ranges.remove(&s);
            if e > p {
                self.ranges.insert(Position::new(p.segment, p.entry + 1), e);
            }
        }
    }

    /// The range starting exactly at `p`, if any.
    pub fn range_starting_at(&self, p: Position) -> Option<(Position, Position)> {
        self.ranges.get(&p).map(|e| (p, *e))
    }

    /// The range holding `p`, if any.
    pub fn range_containing(&self, p: Position) -> Option<(Position, Position)> {
        self.ranges
            .range(..=p)
            .next_back()
            .filter(|(s, e)| s.segment == p.segment && p.entry <= e.entry)
            .map(|(s, e)| (*s, *e))
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// The first range, if any.
    pub fn first(&self) -> Option<(Position, Position)> {
        self.ranges.iter().next().map(|(s, e)| (*s, *e))
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = (Position, Position)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// Number of positions of `segment` in `[from, to]` that the set holds.
    pub fn count_in_segment(&self, segment: u64, from: u64, to: u64) -> u64 {
        let lo = Position::new(segment, 0);
        let hi = Position::new(segment, to);
        self.ranges
            .range(lo..=hi)
            .map(|(s, e)| {
                let a = s.entry.max(from);
                let b = e.entry.min(to);
                if a <= b {
                    b - a + 1
                } else {
                    0
                }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn p(s: u64, e: u64) -> Position {
        Position::new(s, e)
    }

    #[test]
    fn adjacent_inserts_merge_into_one_range() {
        let mut r = RangeSet::new();
        r.insert(p(1, 3));
        r.insert(p(1, 5));
        r.insert(p(1, 4));
        assert_eq!(r.range_count(), 1);
        assert_eq!(r.first(), Some((p(1, 3), p(1, 5))));
    }

    #[test]
    fn ranges_never_merge_across_segments() {
        let mut r = RangeSet::new();
        r.insert(p(1, 9));
        r.insert(p(2, 0));
        assert_eq!(r.range_count(), 2);
    }

    #[test]
    fn remove_up_to_splits_a_range() {
        let mut r = RangeSet::new();
        r.insert_range(p(1, 0), p(1, 9));
        r.remove_up_to(p(1, 4));
        assert_eq!(r.first(), Some((p(1, 5), p(1, 9))));
        assert_eq!(r.len(), 5);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set_of_positions(
            ops in proptest::collection::vec((0u64..3, 0u64..40, 0u64..4, any::<bool>()), 0..120),
            cut in (0u64..3, 0u64..40),
        ) {
            let mut r = RangeSet::new();
            let mut model = BTreeSet::new();
            for (seg, start, extra, single) in ops {
                let end = if single { start } else { start + extra };
                r.insert_range(p(seg, start), p(seg, end));
                for e in start..=end { model.insert(p(seg, e)); }
            }
            for seg in 0..3 { for e in 0..45 {
                prop_assert_eq!(r.contains(p(seg, e)), model.contains(&p(seg, e)));
            }}
            prop_assert_eq!(r.len(), model.len() as u64);
            // Ranges are disjoint and not adjacent within a segment (compact).
            let v: Vec<_> = r.iter().collect();
            for w in v.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
                if w[0].1.segment == w[1].0.segment {
                    prop_assert!(w[0].1.entry + 1 < w[1].0.entry);
                }
            }
            for seg in 0..3 {
                let expected = model.iter().filter(|q| q.segment == seg && (5..=20).contains(&q.entry)).count() as u64;
                prop_assert_eq!(r.count_in_segment(seg, 5, 20), expected);
            }
            let cut = p(cut.0, cut.1);
            r.remove_up_to(cut);
            model.retain(|q| *q > cut);
            prop_assert_eq!(r.len(), model.len() as u64);
            for q in &model { prop_assert!(r.contains(*q)); }
        }
    }
}
