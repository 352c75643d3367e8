//! Key_Shared: which consumer owns a key.
//!
//! A key (the message's ordering key, else its partition key) hashes to one of
//! 65,536 slots: `murmur3_32(key) & i32::MAX` mod 65,536, the hash Pulsar uses, so
//! a client's sticky hash ranges mean the same slots here as on Pulsar.
//! * Auto-split: each consumer owns [`POINTS_PER_CONSUMER`] points on a ring of
//!   slots; a slot belongs to the first point at or after it (wrapping). A consumer
//!   joining or leaving moves only the slots next to its points.
//! * Sticky: consumers declare inclusive slot ranges, which may not overlap.

use std::collections::BTreeMap;

pub const SLOTS: u32 = 65_536;
pub const POINTS_PER_CONSUMER: u32 = 100;

/// MurmurHash3, x86 32-bit variant (Austin Appleby's public-domain algorithm).
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The slot of a key.
pub fn slot(key: &[u8]) -> u32 {
    (murmur3_32(key, 0) & 0x7fff_ffff) % SLOTS
}

/// Slot ownership among a subscription's consumers, keyed by `C` (a consumer id).
#[derive(Debug, Clone)]
pub struct Selector<C: Copy + Ord> {
    /// Auto-split ring: (slot, owner) points.
    ring: BTreeMap<(u32, C), ()>,
    /// Sticky ranges: start → (end inclusive, owner).
    ranges: BTreeMap<u32, (u32, C)>,
}

impl<C: Copy + Ord> Default for Selector<C> {
    fn default() -> Self {
        Selector {
            ring: BTreeMap::new(),
            ranges: BTreeMap::new(),
        }
    }
}

impl<C: Copy + Ord> Selector<C> {
    /// Adds an auto-split consumer; `seed` names it (distinct per consumer).
    pub fn add_auto(&mut self, owner: C, seed: &str) {
        for i in 0..POINTS_PER_CONSUMER {
            let p = slot(format!("{seed}{i}").as_bytes());
            self.ring.insert((p, owner), ());
        }
    }

    /// Adds a sticky consumer owning inclusive `ranges`; refused if any is out of
    /// bounds or overlaps another consumer's.
    pub fn add_sticky(&mut self, owner: C, ranges: &[(u32, u32)]) -> Result<(), String> {
        for &(s, e) in ranges {
            if s > e || e >= SLOTS {
                return Err(format!("invalid hash range [{s}, {e}]"));
            }
            let overlap = self
                .ranges
                .range(..=e)
                .next_back()
                .is_some_and(|(_, (end, _))| *end >= s);
            if overlap {
                return Err(format!("hash range [{s}, {e}] overlaps another consumer's"));
            }
        }
        for (i, &(s, e)) in ranges.iter().enumerate() {
            if ranges[..i].iter().any(|&(s2, e2)| s <= e2 && s2 <= e) {
                return Err(format!("hash range [{s}, {e}] overlaps another of its own"));
            }
        }
        for &(s, e) in ranges {
            self.ranges.insert(s, (e, owner));
        }
        Ok(())
    }

    pub fn remove(&mut self, owner: C) {
        self.ring.retain(|(_, o), _| *o != owner);
        self.ranges.retain(|_, (_, o)| *o != owner);
    }

    /// The inclusive slot ranges `owner` holds (its sticky ranges, or what
    /// the auto-split ring gives it), merged and in order.
    pub fn ranges_of(&self, owner: C) -> Vec<(u32, u32)> {
        let sticky: Vec<(u32, u32)> = self
            .ranges
            .iter()
            .filter(|(_, (_, o))| *o == owner)
            .map(|(s, (e, _))| (*s, *e))
            .collect();
        if !sticky.is_empty() {
            return sticky;
        }
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut push = |s: u32, e: u32| match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(s) => last.1 = e,
            _ => out.push((s, e)),
        };
        // A ring point owns the slots after the point before it, up to itself;
        // the first point also owns the slots after the last one (wrapping).
        let mut prev: Option<u32> = None;
        let mut first_owner = None;
        for (point, o) in self.ring.keys() {
            let start = prev.map_or(0, |p| p.saturating_add(1));
            if prev.is_none() {
                first_owner = Some(*o);
            }
            if *o == owner && start <= *point && (prev.is_none() || prev != Some(*point)) {
                push(start, *point);
            }
            prev = Some(*point);
        }
        if let (Some(last), Some(o)) = (prev, first_owner) {
            if o == owner && last + 1 < SLOTS {
                push(last + 1, SLOTS - 1);
            }
        }
        out
    }

    /// The consumer owning `slot`, if any.
    pub fn owner(&self, slot: u32) -> Option<C> {
        if let Some((_, (end, owner))) = self.ranges.range(..=slot).next_back() {
            if *end >= slot {
                return Some(*owner);
            }
        }
        self.ring
            .range((slot, first_of::<C>(&self.ring)?)..)
            .next()
            .or_else(|| self.ring.iter().next())
            .map(|((_, o), _)| *o)
    }
}

/// The smallest owner value present (a lower bound for range queries).
fn first_of<C: Copy + Ord>(ring: &BTreeMap<(u32, C), ()>) -> Option<C> {
    ring.keys().map(|(_, o)| *o).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_cover_every_slot_once_and_agree_with_owner() {
        let mut sel = Selector::default();
        for c in 0..3u32 {
            sel.add_auto(c, &format!("consumer-{c}"));
        }
        let mut covered = 0u64;
        for c in 0..3u32 {
            for (s, e) in sel.ranges_of(c) {
                covered += u64::from(e - s + 1);
                for slot in [s, e, s + (e - s) / 2] {
                    assert_eq!(sel.owner(slot), Some(c), "slot {slot}");
                }
            }
        }
        assert_eq!(covered, u64::from(SLOTS));
        let mut sticky = Selector::default();
        sticky.add_sticky(7u32, &[(0, 9), (100, 199)]).unwrap();
        assert_eq!(sticky.ranges_of(7), vec![(0, 9), (100, 199)]);
        assert!(sticky.ranges_of(8).is_empty());
    }
    use proptest::prelude::*;

    #[test]
    fn murmur3_matches_published_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn sticky_ranges_must_not_overlap() {
        let mut s = Selector::<u32>::default();
        s.add_sticky(1, &[(0, 100), (200, 300)]).unwrap();
        assert!(s.add_sticky(2, &[(50, 60)]).is_err());
        assert!(s.add_sticky(2, &[(300, 400)]).is_err());
        assert!(s.add_sticky(2, &[(101, 199)]).is_ok());
        assert!(s.add_sticky(3, &[(65_535, 65_536)]).is_err());
        assert_eq!(s.owner(150), Some(2));
        assert_eq!(s.owner(250), Some(1));
        assert_eq!(s.owner(301), None);
    }

    proptest! {
        /// Removing a consumer moves only the slots it owned.
        #[test]
        fn leaving_consumer_moves_only_its_slots(n in 2u32..8, leaving in 0u32..8) {
            let leaving = leaving % n;
            let mut s = Selector::<u32>::default();
            for c in 0..n {
                s.add_auto(c, &format!("consumer-{c}"));
            }
            let before: Vec<_> = (0..SLOTS).step_by(97).map(|x| s.owner(x)).collect();
            s.remove(leaving);
            for (i, x) in (0..SLOTS).step_by(97).enumerate() {
                let now = s.owner(x);
                prop_assert!(now.is_some());
                if before[i] != Some(leaving) {
                    prop_assert_eq!(now, before[i]);
                }
            }
        }
    }
}
