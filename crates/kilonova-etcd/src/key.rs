//! How metadata keys are laid out in etcd, so that a key's children are one
//! range scan and a prefix's subtree is one key range.
//!
//! A key `/a/b` under the store's root `R` is stored as `R 0x00 a 0x00 b`:
//! each `/` becomes the byte 0x00, which sorts before every byte a path
//! component can hold once escaped (0x00 → 0x01 0x01, 0x01 → 0x01 0x02; every
//! other byte stands for itself). Then:
//! - the encoding keeps byte order (the escape is monotone and prefix-free),
//!   so children come out of a range scan in the byte order of their names;
//! - everything below `/a` lies in `[R 0 a 0, R 0 a 1)`, contiguous, before a
//!   sibling such as `/a-b` (`R 0 a -`): `/a`'s subtree with `/a` itself is
//!   `[R 0 a, R 0 a 1)`;
//! - the keys below child `n` end before `R 0 a 0 n 1`, which is no key's
//!   encoding (0x01 is always followed by 0x01 or 0x02 within a key), and the
//!   next sibling (at least `n 0x00` → `n 1 1`) starts at or after it: a scan
//!   that has seen child `n` resumes there, skipping `n`'s subtree in one step.
//!
//!
//! `check_key` refuses NUL in keys (the embedded store's separator), so the
//! 0x00 escape only keeps this layout total over any string; 0x01 is a
//! key's byte like any other.
//!
//! [`ChildScan`] is the paging logic over such scans, free of I/O.

use kilonova_metadata::Page;

const SEP: u8 = 0x00;
const ESC: u8 = 0x01;

/// Appends `component` escaped.
fn escape_into(out: &mut Vec<u8>, component: &str) {
    for &b in component.as_bytes() {
        match b {
            SEP => out.extend_from_slice(&[ESC, 0x01]),
            ESC => out.extend_from_slice(&[ESC, 0x02]),
            b => out.push(b),
        }
    }
}

/// A component back from its escaped form; `None` if it is not one (a
/// component never holds a `/`: keys are split there).
fn unescape(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        match b {
            SEP | b'/' => return None,
            ESC => match bytes.next() {
                Some(0x01) => out.push(SEP),
                Some(0x02) => out.push(ESC),
                _ => return None,
            },
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// The etcd form of the keys of one store (one root).
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: Vec<u8>,
}

impl Layout {
    /// A layout under `root` (a string without NUL or 0x01 bytes, checked by the config).
    pub(crate) fn new(root: &str) -> Self {
        Layout {
            root: root.as_bytes().to_vec(),
        }
    }

    /// The stored form of `key` (`/`-separated; `""` or `/` is the root).
    pub(crate) fn encode(&self, key: &str) -> Vec<u8> {
        let mut out = self.root.clone();
        for component in key.split('/').filter(|c| !c.is_empty()) {
            out.push(SEP);
            escape_into(&mut out, component);
        }
        out
    }

    /// The key a stored form stands for; `None` for bytes outside this
    /// layout (another root, or not an encoding).
    pub(crate) fn decode(&self, raw: &[u8]) -> Option<String> {
        let rest = raw.strip_prefix(self.root.as_slice())?;
        let rest = rest.strip_prefix(&[SEP])?;
        let mut key = String::with_capacity(rest.len() + 1);
        for component in rest.split(|&b| b == SEP) {
            if component.is_empty() {
                return None;
            }
            key.push('/');
            key.push_str(&unescape(component)?);
        }
        Some(key)
    }

    /// The key range `[start, end)` of `prefix` and every key below it.
    pub(crate) fn subtree(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.encode(prefix);
        let mut end = start.clone();
        end.push(ESC);
        (start, end)
    }
}

/// Where a scan of children resumes after child `name`: past `name`'s whole subtree.
fn past(base: &[u8], name: &str) -> Vec<u8> {
    let mut from = base.to_vec();
    escape_into(&mut from, name);
    from.push(ESC);
    from
}

/// One page of a key's children, gathered from range scans (keys only, in
/// key order) that the caller runs: [`ChildScan::next_range`] says what to
/// scan, [`ChildScan::feed`] takes what the scan found, until it gives the page.
#[derive(Debug)]
pub(crate) struct ChildScan {
    /// The children's common start: the parent's form and a separator.
    base: Vec<u8>,
    /// Past the parent's subtree.
    end: Vec<u8>,
    from: Vec<u8>,
    limit: usize,
    page: Page,
}

/// Keys asked for per scan at most (etcd answers up to its request size limit).
pub(crate) const MAX_SCAN_KEYS: usize = 1000;

impl ChildScan {
    /// Children of `prefix` after `start_after`, at most `limit` of them.
    pub(crate) fn new(
        layout: &Layout,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Self {
        let mut base = layout.encode(prefix);
        base.push(SEP);
        let mut end = base.clone();
        if let Some(last) = end.last_mut() {
            *last = ESC;
        }
        let from = start_after.map_or_else(|| base.clone(), |name| past(&base, name));
        ChildScan {
            base,
            end,
            from,
            limit,
            page: Page::default(),
        }
    }

    /// The next scan: keys in `[from, end)`, at most this many.
    pub(crate) fn next_range(&self) -> (&[u8], &[u8], usize) {
        // One more than the page still needs tells whether more follow.
        let want = (self.limit - self.page.names.len() + 1).clamp(1, MAX_SCAN_KEYS);
        (&self.from, &self.end, want)
    }

    /// Takes the keys a scan found (`more`: the range had more keys past
    /// them). Returns the page once it is complete.
    pub(crate) fn feed(&mut self, keys: &[Vec<u8>], more: bool) -> Option<Page> {
        if self.limit == 0 {
            self.page.more = !keys.is_empty();
            return Some(std::mem::take(&mut self.page));
        }
        let mut last: Option<String> = None;
        for key in keys {
            let Some(rest) = key.strip_prefix(self.base.as_slice()) else {
                continue; // outside the range asked for: not ours to list
            };
            let raw = rest.split(|&b| b == SEP).next().unwrap_or(rest);
            let Some(name) = unescape(raw) else {
                continue; // not a key of this layout
            };
            if last.as_deref() == Some(name.as_str()) {
                continue; // a deeper key of the child just listed
            }
            if self.page.names.len() == self.limit {
                self.page.more = true;
                return Some(std::mem::take(&mut self.page));
            }
            self.page.names.push(name.clone());
            last = Some(name);
        }
        if !more {
            return Some(std::mem::take(&mut self.page));
        }
        self.from = match (last, keys.last()) {
            (Some(name), _) => past(&self.base, &name),
            // Only bytes of no child (not of this layout): step past them.
            (None, Some(k)) => {
                let mut from = k.clone();
                from.push(SEP); // the smallest key after k
                from
            }
            (None, None) => return Some(std::mem::take(&mut self.page)),
        };
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn component() -> impl Strategy<Value = String> {
        // Bytes at the edges of the escape (NUL, 0x01, 0x02), the separator's
        // neighbours in ASCII, and some non-ASCII.
        prop::collection::vec(
            prop::sample::select(vec![
                "\u{0}", "\u{1}", "\u{2}", "-", ".", "0", "a", "b", "z", "é", "\u{7f}",
            ]),
            1..5,
        )
        .prop_map(|parts| parts.concat())
    }

    fn key() -> impl Strategy<Value = String> {
        prop::collection::vec(component(), 1..5).prop_map(|c| format!("/{}", c.join("/")))
    }

    /// The children of `prefix` by definition: the first component below it
    /// of every key under it, each once, in byte order.
    fn model_children(keys: &BTreeSet<String>, prefix: &str) -> Vec<String> {
        let base = format!("{}/", prefix.trim_end_matches('/'));
        let names: BTreeSet<&str> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(base.as_str()))
            .filter_map(|rest| rest.split('/').next())
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Runs a scan against stored keys, `batch` keys per range request at most.
    fn run_scan(stored: &BTreeMap<Vec<u8>, ()>, mut scan: ChildScan, batch: usize) -> Page {
        for _ in 0..1_000 {
            let (from, end, want) = scan.next_range();
            let want = want.min(batch);
            let found: Vec<Vec<u8>> = stored
                .range(from.to_vec()..end.to_vec())
                .map(|(k, _)| k.clone())
                .take(want + 1)
                .collect();
            let more = found.len() > want;
            let keys = &found[..found.len().min(want)];
            if let Some(page) = scan.feed(keys, more) {
                return page;
            }
        }
        panic!("the scan does not end");
    }

    #[test]
    fn layout_examples() {
        let l = Layout::new("/kn");
        assert_eq!(l.encode("/a/b"), b"/kn\0a\0b");
        assert_eq!(l.encode("/a\u{0}"), b"/kn\0a\x01\x01");
        assert_eq!(l.encode(""), b"/kn");
        assert_eq!(l.decode(b"/kn\0a\0b").as_deref(), Some("/a/b"));
        assert_eq!(l.decode(b"/kn2\0a"), None, "another root");
        assert_eq!(l.decode(b"/kn\0a\x01"), None, "a dangling escape");
        assert_eq!(l.decode(b"/kn\0\0a"), None, "an empty component");
        assert_eq!(l.decode(b"/kn\0a/b"), None, "a slash inside a component");
    }

    proptest! {
        #[test]
        fn keys_round_trip(k in key()) {
            let l = Layout::new("/root");
            prop_assert_eq!(l.decode(&l.encode(&k)), Some(k));
        }

        #[test]
        fn any_bytes_decode_to_a_key_that_encodes_back_or_to_none(
            raw in prop::collection::vec(
                prop::sample::select(vec![0u8, 1, 2, b'/', b'a', b'r', 0xff]),
                0..24,
            ),
            rooted in any::<bool>(),
        ) {
            let l = Layout::new("/r");
            // Mostly bytes under the root, as etcd's answers hold.
            let raw = if rooted { [b"/r\0".as_slice(), &raw].concat() } else { raw };
            if let Some(key) = l.decode(&raw) {
                prop_assert_eq!(l.encode(&key), raw, "{:?}", key);
            }
        }

        #[test]
        fn scans_fed_any_bytes_never_panic(
            keys in prop::collection::vec(
                prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, b'a', 0xff]), 0..8),
                0..10,
            ),
            more in any::<bool>(),
        ) {
            let l = Layout::new("");
            let mut scan = ChildScan::new(&l, "", None, 3);
            if let Some(page) = scan.feed(&keys, more) {
                prop_assert!(page.names.len() <= 3);
            }
        }

        #[test]
        fn encoding_keeps_the_order_of_names(a in component(), b in component()) {
            let l = Layout::new("/r");
            let (ea, eb) = (l.encode(&format!("/{a}")), l.encode(&format!("/{b}")));
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), ea.cmp(&eb));
        }

        #[test]
        fn a_subtree_is_one_range(k in key(), p in key()) {
            let l = Layout::new("/r");
            let (start, end) = l.subtree(&p);
            let e = l.encode(&k);
            let inside = start <= e && e < end;
            prop_assert_eq!(inside, kilonova_metadata::under(&k, &p), "{} under {}", k, p);
        }

        #[test]
        fn scans_list_each_child_once_in_order(
            keys in prop::collection::btree_set(key(), 0..40),
            extra in prop::collection::vec(key(), 0..5),
            limit in 1usize..6,
            batch in 1usize..5,
        ) {
            let l = Layout::new("/r");
            // Other roots' keys sort next to ours and must never show up.
            let mut stored: BTreeMap<Vec<u8>, ()> = keys.iter().map(|k| (l.encode(k), ())).collect();
            stored.insert(b"/r2\0x".to_vec(), ());
            stored.insert(b"/r\x01".to_vec(), ());
            let prefixes: Vec<String> = std::iter::once(String::new())
                .chain(keys.iter().chain(&extra).map(|k| {
                    // Each key and its parent.
                    match k.rfind('/') {
                        Some(0) | None => k.clone(),
                        Some(i) => k[..i].to_owned(),
                    }
                }))
                .collect();
            for prefix in prefixes {
                let expected = model_children(&keys, &prefix);
                let mut listed = Vec::new();
                let mut after: Option<String> = None;
                for pages in 1.. {
                    prop_assert!(pages <= keys.len() + 1, "paging does not end");
                    let scan = ChildScan::new(&l, &prefix, after.as_deref(), limit);
                    let page = run_scan(&stored, scan, batch);
                    prop_assert!(page.names.len() <= limit);
                    listed.extend(page.names.iter().cloned());
                    if !page.more {
                        break;
                    }
                    after = page.names.last().cloned();
                    prop_assert!(after.is_some(), "a page with more is not empty");
                }
                prop_assert_eq!(&listed, &expected, "children of {:?}", prefix);
            }
        }
    }
}
