//! A small seeded random generator (xoshiro256**, seeded through SplitMix64).
//! Our own rather than a crate's so that a seed printed today replays the same
//! inputs after any dependency upgrade.

/// Deterministic pseudo-random numbers from a 64-bit seed.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

/// SplitMix64's step: spreads a counter or seed over all 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let a = mix(seed);
        let b = mix(a);
        let c = mix(b);
        let d = mix(c);
        Rng {
            s: [a, b, c, d | 1],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True `num` times in `den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        self.below(den as usize) < num as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Mostly short text, sometimes empty, long, non-ASCII or with control
    /// characters.
    pub fn text(&mut self, max: usize) -> String {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "0",
            "-",
            "_",
            ".",
            "/",
            "..",
            " ",
            "%",
            "\\",
            "\"",
            "\u{0}",
            "\n",
            "é",
            "\u{10FFFF}",
            "ß",
            "🦀",
            "persistent://",
            "public",
            "default",
        ];
        let n = match self.below(8) {
            0 => 0,
            1 => self.between(max / 2, max),
            _ => self.between(1, 12.min(max.max(1))),
        };
        let mut s = String::new();
        while s.len() < n {
            if self.chance(1, 3) {
                s.push_str(self.pick(PIECES).copied().unwrap_or("a"));
            } else {
                s.push(char::from(b'a' + self.below(26) as u8));
            }
        }
        s
    }

    /// A 64-bit value that tends to sit on a boundary.
    pub fn interesting_u64(&mut self) -> u64 {
        const VALUES: &[u64] = &[
            0,
            1,
            2,
            7,
            8,
            63,
            64,
            127,
            128,
            255,
            256,
            1023,
            4096,
            65_535,
            65_536,
            (1 << 20) + 1,
            (5 << 20) + 1,
            i32::MAX as u64,
            1 << 31,
            u32::MAX as u64 - 1,
            u32::MAX as u64,
            1 << 32,
            1 << 40,
            i64::MAX as u64,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        match self.below(4) {
            0 => self.next_u64(),
            1 => self.next_u64() & 0xff,
            _ => VALUES.get(self.below(VALUES.len())).copied().unwrap_or(0),
        }
    }

    /// A signed value that tends to sit on a boundary.
    pub fn interesting_i64(&mut self) -> i64 {
        const VALUES: &[i64] = &[
            -1,
            i32::MIN as i64,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
            -2,
            1,
        ];
        if self.chance(1, 3) {
            VALUES.get(self.below(VALUES.len())).copied().unwrap_or(0)
        } else {
            self.interesting_u64() as i64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn below_stays_below() {
        let mut r = Rng::new(7);
        assert_eq!(r.below(0), 0);
        for n in 1..50 {
            assert!(r.below(n) < n);
        }
    }
}
