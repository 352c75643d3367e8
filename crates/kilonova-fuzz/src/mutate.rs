//! Inputs and the byte-level mutations applied to them: bit flips, random and
//! boundary bytes, truncation, deleted / duplicated / inserted ranges, splices
//! with another input, and *length-field lies*: a field the generator marked as
//! a length or count is set to 0, its true value ± 1, twice it, a cap ± 1 or
//! the largest value of its width.

use crate::rng::Rng;

/// An integer field of an input that a decoder trusts as a length or count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub at: usize,
    /// 1, 2, 4 or 8 bytes.
    pub width: u8,
    pub big_endian: bool,
}

/// Bytes to feed a target, with the length fields its generator knows of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Input {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
}

impl Input {
    pub fn new(bytes: Vec<u8>) -> Self {
        Input {
            bytes,
            fields: Vec::new(),
        }
    }

    /// Appends `bytes`, shifting `fields` (offsets within `bytes`) to where they land.
    pub fn extend(&mut self, bytes: &[u8], fields: &[Field]) {
        let base = self.bytes.len();
        self.fields.extend(fields.iter().map(|f| Field {
            at: f.at + base,
            ..*f
        }));
        self.bytes.extend_from_slice(bytes);
    }

    /// Marks a big-endian u32 length field at `at`.
    pub fn u32_be_at(&mut self, at: usize) {
        self.fields.push(Field {
            at,
            width: 4,
            big_endian: true,
        });
    }

    /// Marks a little-endian field of `width` bytes at `at`.
    pub fn le_at(&mut self, at: usize, width: u8) {
        self.fields.push(Field {
            at,
            width,
            big_endian: false,
        });
    }
}

fn read_field(b: &[u8], f: Field) -> Option<u64> {
    let s = b.get(f.at..f.at + usize::from(f.width))?;
    let mut v = 0u64;
    if f.big_endian {
        for byte in s {
            v = (v << 8) | u64::from(*byte);
        }
    } else {
        for byte in s.iter().rev() {
            v = (v << 8) | u64::from(*byte);
        }
    }
    Some(v)
}

fn write_field(b: &mut [u8], f: Field, v: u64) {
    let w = usize::from(f.width);
    let Some(s) = b.get_mut(f.at..f.at + w) else {
        return;
    };
    for (i, byte) in s.iter_mut().enumerate() {
        let shift = if f.big_endian { (w - 1 - i) * 8 } else { i * 8 };
        *byte = (v >> shift) as u8;
    }
}

fn width_max(width: u8) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (u32::from(width) * 8)) - 1
    }
}

/// A lie for a length field whose true value is `truth`.
fn lie(rng: &mut Rng, truth: u64, width: u8, input_len: usize) -> u64 {
    let max = width_max(width);
    let v = match rng.below(10) {
        0 => 0,
        1 => truth.wrapping_sub(1),
        2 => truth.wrapping_add(1),
        3 => truth.wrapping_mul(2),
        4 => max,
        5 => max >> 1,
        6 => input_len as u64,
        7 => (input_len as u64).wrapping_add(rng.below(16) as u64),
        8 => truth.wrapping_add(rng.below(64) as u64).wrapping_sub(32),
        _ => rng.interesting_u64(),
    };
    v & max
}

/// Applies between 1 and 6 random mutations to `input`. `others` are inputs
/// to splice from.
pub fn mutate(rng: &mut Rng, input: &mut Input, others: &[Input]) {
    let most = if rng.chance(1, 4) { 12 } else { 4 };
    let rounds = 1 + rng.below(most);
    // In-place changes first, while the recorded field offsets still hold.
    let lies = if input.fields.is_empty() {
        0
    } else {
        rng.below(3)
    };
    for _ in 0..lies {
        if let Some(&f) = rng.pick(&input.fields) {
            let truth = read_field(&input.bytes, f).unwrap_or(0);
            let v = lie(rng, truth, f.width, input.bytes.len());
            write_field(&mut input.bytes, f, v);
        }
    }
    for _ in 0..rounds.saturating_sub(lies) {
        one_mutation(rng, &mut input.bytes, others);
    }
}

fn one_mutation(rng: &mut Rng, b: &mut Vec<u8>, others: &[Input]) {
    let len = b.len();
    match rng.below(13) {
        // Flip a bit.
        0 | 1 => {
            if len > 0 {
                let i = rng.below(len);
                if let Some(byte) = b.get_mut(i) {
                    *byte ^= 1 << rng.below(8);
                }
            }
        }
        // A random or boundary byte.
        2 | 3 => {
            if len > 0 {
                let i = rng.below(len);
                let v = match rng.below(3) {
                    0 => rng.next_u64() as u8,
                    1 => *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 0x01]).unwrap_or(&0),
                    _ => rng.next_u64() as u8 & 0x0f,
                };
                if let Some(byte) = b.get_mut(i) {
                    *byte = v;
                }
            }
        }
        // A boundary integer at a random offset, either byte order.
        4 | 5 => {
            let width = *rng.pick(&[2u8, 4, 4, 8]).unwrap_or(&4);
            if len >= usize::from(width) {
                let f = Field {
                    at: rng.below(len - usize::from(width) + 1),
                    width,
                    big_endian: rng.chance(1, 2),
                };
                let truth = read_field(b, f).unwrap_or(0);
                let v = lie(rng, truth, width, len);
                write_field(b, f, v);
            }
        }
        // Truncate: anywhere, or just the last few bytes.
        6 => {
            let keep = if rng.chance(1, 2) {
                rng.below(len + 1)
            } else {
                len.saturating_sub(1 + rng.below(8))
            };
            b.truncate(keep);
        }
        // Delete a range.
        7 => {
            if len > 0 {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                b.drain(at..at + n);
            }
        }
        // Duplicate a range in place.
        8 => {
            if len > 0 && len < 1 << 20 {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy: Vec<u8> = b.get(at..at + n).unwrap_or_default().to_vec();
                let to = rng.below(len + 1);
                b.splice(to..to, copy);
            }
        }
        // Insert random or zero bytes.
        9 => {
            if len < 1 << 20 {
                let n = 1 + rng.below(16);
                let at = rng.below(len + 1);
                let fill = if rng.chance(1, 2) {
                    rng.bytes(n)
                } else {
                    vec![0; n]
                };
                b.splice(at..at, fill);
            }
        }
        // Splice: our head, another input's tail.
        10 => {
            if let Some(other) = rng.pick(others) {
                let head = rng.below(len + 1);
                let tail_from = rng.below(other.bytes.len() + 1);
                b.truncate(head);
                b.extend_from_slice(other.bytes.get(tail_from..).unwrap_or_default());
            }
        }
        // Append another input whole (streams of frames, records).
        11 => {
            if let Some(other) = rng.pick(others) {
                if len < 1 << 20 {
                    b.extend_from_slice(&other.bytes);
                }
            }
        }
        // Swap two bytes.
        _ => {
            if len > 1 {
                b.swap(rng.below(len), rng.below(len));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_and_write_in_both_byte_orders() {
        let mut b = vec![0u8; 8];
        let be = Field {
            at: 2,
            width: 4,
            big_endian: true,
        };
        write_field(&mut b, be, 0x0102_0304);
        assert_eq!(b, [0, 0, 1, 2, 3, 4, 0, 0]);
        assert_eq!(read_field(&b, be), Some(0x0102_0304));
        let le = Field {
            big_endian: false,
            ..be
        };
        assert_eq!(read_field(&b, le), Some(0x0403_0201));
        assert_eq!(read_field(&b, Field { at: 6, ..be }), None);
    }

    #[test]
    fn extend_shifts_field_offsets() {
        let mut i = Input::new(vec![9; 3]);
        let mut part = Input::new(vec![0; 8]);
        part.u32_be_at(4);
        i.extend(&part.bytes, &part.fields);
        assert_eq!(i.fields[0].at, 7);
        assert_eq!(i.bytes.len(), 11);
    }

    #[test]
    fn mutation_is_deterministic_for_a_seed() {
        let base = Input::new((0..=255).collect());
        let run = |seed| {
            let mut i = base.clone();
            mutate(&mut Rng::new(seed), &mut i, std::slice::from_ref(&base));
            i
        };
        assert_eq!(run(5), run(5));
    }
}
