//! Bundles and their ownership, for a cluster of brokers.
//!
//! A namespace's topics are spread over *bundles*: ranges of a 32-bit hash
//! space, cut at the namespace's stored boundaries ([`BundlesData`]:
//! `0x00000000 … 0xffffffff`, each range closed below and open above, the
//! last one closed at `0xffffffff` too). A topic belongs to the bundle
//! holding the CRC-32 (IEEE) of its full name, as Pulsar places it, so a
//! topic lands in the same bundle range in both.
//!
//! One broker owns a bundle at a time, through an ephemeral key bound to
//! its metadata session, `/ownership/<tenant>/<namespace>/<range>`, holding
//! [`BundleOwner`] (its URLs, as Pulsar's ownership record holds them),
//! created only if absent. The ownership's *epoch* is the version the store
//! gave that key when it was created: versions only grow, across deletes
//! and re-creates too, so each ownership's epoch is its own and higher than
//! every earlier one's, and it comes with the creation itself (no second
//! write can leave them apart). A broker that lost its ownership (session
//! expired, partitioned away) holds an epoch that is no longer the key's —
//! what writes guarded by ownership check (fencing):
//! [`Resources::commit_if_owner`] applies writes in one metadata transaction
//! with a check that each bundle's ownership key is still at the epoch held,
//! so a deposed owner's writes never land (docs/adr/0015-bundle-ownership-and-epochs.md).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{MetadataError, Result};
use crate::names::{NamespaceName, TopicName};
use crate::policies::BundlesData;
use crate::resources::{from_json, to_json, Resources};
use crate::store::{Expect, SessionId, TxnOp};

/// The top of the hash space (Pulsar's last boundary).
pub const HASH_MAX: u32 = 0xffff_ffff;

/// A bundle: the hashes `lower..upper` (`..=upper` for the last bundle, whose
/// `upper` is [`HASH_MAX`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BundleRange {
    pub lower: u32,
    pub upper: u32,
}

impl BundleRange {
    /// The whole hash space: one bundle.
    pub const FULL: BundleRange = BundleRange {
        lower: 0,
        upper: HASH_MAX,
    };

    pub fn contains(&self, hash: u32) -> bool {
        self.lower <= hash && (hash < self.upper || (self.upper == HASH_MAX && hash == HASH_MAX))
    }
}

/// Pulsar's spelling: `0x00000000_0x40000000`.
impl fmt::Display for BundleRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}_0x{:08x}", self.lower, self.upper)
    }
}

impl FromStr for BundleRange {
    type Err = MetadataError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || MetadataError::Invalid(format!("{s:?} is not a bundle range (0x…_0x…)"));
        let (lower, upper) = s.split_once('_').ok_or_else(bad)?;
        let (lower, upper) = (
            parse_boundary(lower).ok_or_else(bad)?,
            parse_boundary(upper).ok_or_else(bad)?,
        );
        if lower >= upper {
            return Err(bad());
        }
        Ok(BundleRange { lower, upper })
    }
}

fn parse_boundary(s: &str) -> Option<u32> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u32::from_str_radix(hex, 16).ok()
}

/// Where a topic's name hashes to (CRC-32, IEEE, of its full name).
pub fn topic_hash(topic: &TopicName) -> u32 {
    crc32fast::hash(topic.to_string().as_bytes())
}

/// A namespace's bundles, in hash order. Refuses boundaries that do not
/// start at 0, end at [`HASH_MAX`] and grow strictly.
pub fn ranges(bundles: &BundlesData) -> Result<Vec<BundleRange>> {
    let bad = |why: &str| {
        MetadataError::Invalid(format!("bundle boundaries {:?}: {why}", bundles.boundaries))
    };
    let bounds = bundles
        .boundaries
        .iter()
        .map(|b| parse_boundary(b).ok_or_else(|| bad("not hexadecimal 0x… values")))
        .collect::<Result<Vec<u32>>>()?;
    if bounds.len() < 2 || bounds.first() != Some(&0) || bounds.last() != Some(&HASH_MAX) {
        return Err(bad("they must run from 0x00000000 to 0xffffffff"));
    }
    bounds
        .windows(2)
        .map(|w| {
            (w[0] < w[1])
                .then_some(BundleRange {
                    lower: w[0],
                    upper: w[1],
                })
                .ok_or_else(|| bad("they must grow"))
        })
        .collect()
}

/// Splits bundle `range` of `bundles` in two at hash `at` (`lower < at <
/// upper`; the middle when `None`, Pulsar's `range_equally_divide`).
/// Returns the two halves. Refuses a range that is not one of the bundles,
/// one too narrow to split, or a namespace at [`crate::policies::MAX_BUNDLES`].
pub fn split(
    bundles: &mut BundlesData,
    range: BundleRange,
    at: Option<u32>,
) -> Result<(BundleRange, BundleRange)> {
    let current = ranges(bundles)?;
    let Some(i) = current.iter().position(|r| *r == range) else {
        return Err(MetadataError::NotFound(format!("bundle {range}")));
    };
    if current.len() >= crate::policies::MAX_BUNDLES as usize {
        return Err(MetadataError::Invalid(format!(
            "the namespace has {} bundles already, the most there may be",
            current.len()
        )));
    }
    let mid = at.unwrap_or(range.lower + (range.upper - range.lower) / 2);
    if mid <= range.lower || mid >= range.upper {
        return Err(MetadataError::Invalid(format!(
            "bundle {range} cannot be split at {mid:#010x}"
        )));
    }
    bundles.boundaries.insert(i + 1, format!("0x{mid:08x}"));
    bundles.num_bundles = current.len() as u32 + 1;
    Ok((
        BundleRange {
            lower: range.lower,
            upper: mid,
        },
        BundleRange {
            lower: mid,
            upper: range.upper,
        },
    ))
}

/// The bundle of `bundles` that `topic` belongs to.
pub fn bundle_of(bundles: &BundlesData, topic: &TopicName) -> Result<BundleRange> {
    let hash = topic_hash(topic);
    ranges(bundles)?
        .into_iter()
        .find(|r| r.contains(hash))
        .ok_or_else(|| MetadataError::Invalid(format!("no bundle holds hash {hash:#010x}")))
}

/// Who owns a bundle: Pulsar's ownership record, with the epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleOwner {
    /// The broker's id (`host:port` of its HTTP service).
    pub broker: String,
    pub native_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_url_tls: Option<String>,
    pub http_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_url_tls: Option<String>,
    /// This ownership's epoch: the ownership key's version (not stored in
    /// the value; [`Resources::bundle_owner`] fills it in).
    #[serde(default, skip_serializing)]
    pub epoch: u64,
    /// The metadata session the ownership is bound to (0: unknown): the
    /// key's lease, filled in as the epoch is.
    #[serde(default, skip_serializing)]
    pub session: u64,
}

/// What an acquisition found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The bundle is now the caller's, at this epoch.
    Owned { epoch: u64 },
    /// Another broker (or the caller, in an earlier session) owns it.
    OwnedBy(BundleOwner),
}

/// A bundle's ownership that a guarded write relies on: the epoch its owner
/// was given ([`Acquired::Owned`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub ns: NamespaceName,
    pub range: BundleRange,
    pub epoch: u64,
}

/// What a write guarded by ownership did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Every write applied, at this revision.
    Committed { revision: u64 },
    /// The caller no longer owns this bundle at the epoch it held (the
    /// first such in the order given): nothing was written.
    Deposed {
        ns: NamespaceName,
        range: BundleRange,
    },
}

fn ownership_key(ns: &NamespaceName, range: BundleRange) -> String {
    format!("/ownership/{}/{}/{range}", ns.tenant, ns.namespace)
}

impl Resources {
    /// The bundle's owner, if one holds it (with its epoch).
    pub async fn bundle_owner(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
    ) -> Result<Option<BundleOwner>> {
        match self.store().get(&ownership_key(ns, range)).await? {
            Some(s) => Ok(Some(BundleOwner {
                epoch: s.version,
                session: s.session.map_or(0, |s| s.0),
                ..from_json("a bundle owner", &s.value)?
            })),
            None => Ok(None),
        }
    }

    /// Takes the bundle for `me` under `session` if nobody owns it.
    pub async fn acquire_bundle(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        me: &BundleOwner,
        session: SessionId,
    ) -> Result<Acquired> {
        const ATTEMPTS: usize = 16;
        let key = ownership_key(ns, range);
        let value = to_json(
            "a bundle owner",
            &BundleOwner {
                epoch: 0,
                session: 0,
                ..me.clone()
            },
        )?;
        for _ in 0..ATTEMPTS {
            if let Some(owner) = self.bundle_owner(ns, range).await? {
                return Ok(Acquired::OwnedBy(owner));
            }
            match self
                .store()
                .put(&key, value.clone(), Expect::Absent, Some(session))
                .await
            {
                Ok(epoch) => return Ok(Acquired::Owned { epoch }),
                // Another broker was quicker: its ownership stands (unless
                // it is gone again by the next look).
                Err(MetadataError::BadVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(MetadataError::Backend(format!(
            "bundle {ns}/{range}: ownership kept changing over {ATTEMPTS} attempts"
        )))
    }

    /// Gives the bundle up, if `broker` owns it at `epoch`. Returns whether it did.
    pub async fn release_bundle(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        broker: &str,
        epoch: u64,
    ) -> Result<bool> {
        if !self.holds_bundle(ns, range, broker, epoch).await? {
            return Ok(false);
        }
        match self
            .store()
            .delete(&ownership_key(ns, range), Expect::Version(epoch))
            .await
        {
            Ok(existed) => Ok(existed),
            Err(MetadataError::BadVersion { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hands the bundle from `broker`, which owns it at `epoch`, straight to
    /// `next` under `next`'s `session` (one conditional write: the bundle is
    /// never unowned meanwhile, so no lookup can place it elsewhere). The
    /// new ownership's epoch, or `None` if `broker` no longer owned it at
    /// `epoch`. [`MetadataError::SessionExpired`] if `next`'s session is gone.
    pub async fn transfer_bundle(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        (broker, epoch): (&str, u64),
        next: &BundleOwner,
        session: SessionId,
    ) -> Result<Option<u64>> {
        if !self.holds_bundle(ns, range, broker, epoch).await? {
            return Ok(None);
        }
        let value = to_json(
            "a bundle owner",
            &BundleOwner {
                epoch: 0,
                session: 0,
                ..next.clone()
            },
        )?;
        match self
            .store()
            .put(
                &ownership_key(ns, range),
                value,
                Expect::Version(epoch),
                Some(session),
            )
            .await
        {
            Ok(epoch) => Ok(Some(epoch)),
            Err(MetadataError::BadVersion { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Applies `writes` in one metadata transaction if every bundle of
    /// `held` is still owned at the epoch held, else applies nothing and
    /// says which bundle was lost ([`Commit::Deposed`]). The building block
    /// of a broker's flush commit: its records land only while it owns the
    /// bundles they belong to, however late the commit arrives.
    ///
    /// The epoch alone identifies the ownership: it is the version of the
    /// ownership key's creation, which named the owner, and a key keeps a
    /// version until it is changed or deleted. So a check of the version is
    /// a check of owner and ownership together, and it is the store's
    /// (etcd's compare), atomic with the writes. Up to
    /// [`crate::MAX_TXN_OPS`] ownerships and writes together; a write's own
    /// failing condition is [`MetadataError::BadVersion`], as
    /// [`crate::MetadataStore::txn`] reports it.
    pub async fn commit_if_owner(&self, held: &[Held], writes: Vec<TxnOp>) -> Result<Commit> {
        if let Some(w) = writes
            .iter()
            .find(|w| crate::store::under(w.key(), "/ownership"))
        {
            // A check and a write of one ownership key would leave a
            // conflict ambiguous; ownership changes only by acquire/release.
            return Err(MetadataError::Invalid(format!(
                "a write guarded by ownership may not touch ownership key {}",
                w.key()
            )));
        }
        let mut ops: Vec<TxnOp> = held
            .iter()
            .map(|h| TxnOp::Check {
                key: ownership_key(&h.ns, h.range),
                expect: Expect::Version(h.epoch),
            })
            .collect();
        ops.extend(writes);
        match self.store().txn(ops).await {
            Ok(revision) => Ok(Commit::Committed { revision }),
            Err(MetadataError::BadVersion {
                key,
                expected,
                found,
            }) => match held.iter().find(|h| ownership_key(&h.ns, h.range) == key) {
                Some(h) => Ok(Commit::Deposed {
                    ns: h.ns.clone(),
                    range: h.range,
                }),
                None => Err(MetadataError::BadVersion {
                    key,
                    expected,
                    found,
                }),
            },
            Err(e) => Err(e),
        }
    }

    /// Whether `broker` still owns the bundle at `epoch` (a deposed owner
    /// does not). A read: a write guarded by ownership uses
    /// [`Resources::commit_if_owner`], which checks in the same step.
    pub async fn holds_bundle(
        &self,
        ns: &NamespaceName,
        range: BundleRange,
        broker: &str,
        epoch: u64,
    ) -> Result<bool> {
        Ok(self
            .bundle_owner(ns, range)
            .await?
            .is_some_and(|o| o.broker == broker && o.epoch == epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_print_and_parse_as_pulsar_spells_them() {
        let r: BundleRange = "0x40000000_0x80000000".parse().unwrap();
        assert_eq!(
            r,
            BundleRange {
                lower: 0x4000_0000,
                upper: 0x8000_0000
            }
        );
        assert_eq!(r.to_string(), "0x40000000_0x80000000");
        assert_eq!(BundleRange::FULL.to_string(), "0x00000000_0xffffffff");
        for bad in ["", "0x1", "0x2_0x1", "40_80", "0x_0x1", "0x1_0x100000000"] {
            assert!(bad.parse::<BundleRange>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_hash_falls_in_exactly_one_bundle() {
        let b = BundlesData::even(4).unwrap();
        let rs = ranges(&b).unwrap();
        assert_eq!(rs.len(), 4);
        for hash in [
            0,
            1,
            0x3fff_ffff,
            0x4000_0000,
            0xbfff_ffff,
            0xc000_0000,
            HASH_MAX - 1,
            HASH_MAX,
        ] {
            assert_eq!(
                rs.iter().filter(|r| r.contains(hash)).count(),
                1,
                "{hash:#x}"
            );
        }
        assert!(
            rs[3].contains(HASH_MAX),
            "the last bundle is closed at the top"
        );
    }

    #[test]
    fn a_topic_goes_to_the_bundle_of_its_names_crc32() {
        let t = TopicName::parse("persistent://public/default/my-topic").unwrap();
        // CRC-32 (IEEE) of the full name, checked against its definition.
        let name = t.to_string();
        let mut crc = 0xffff_ffffu32;
        for b in name.bytes() {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        assert_eq!(topic_hash(&t), !crc);
        let b = BundlesData::even(16).unwrap();
        let r = bundle_of(&b, &t).unwrap();
        assert!(r.contains(!crc));
    }

    #[test]
    fn a_split_cuts_one_bundle_in_two_and_keeps_every_hash_in_one_bundle() {
        let mut b = BundlesData::even(4).unwrap();
        let second = ranges(&b).unwrap()[1];
        let (lo, hi) = split(&mut b, second, None).unwrap();
        assert_eq!(lo.to_string(), "0x40000000_0x60000000");
        assert_eq!(hi.to_string(), "0x60000000_0x80000000");
        assert_eq!(b.num_bundles, 5);
        let after = ranges(&b).unwrap();
        assert_eq!(after.len(), 5);
        assert_eq!(&after[1..3], &[lo, hi]);
        // The last bundle holds the top hash, also after a split.
        let last = *after.last().unwrap();
        let (_, top) = split(&mut b, last, None).unwrap();
        assert!(top.contains(HASH_MAX));
        // Not a bundle (any more), or too narrow.
        assert!(matches!(
            split(&mut b, second, None),
            Err(MetadataError::NotFound(_))
        ));
        let narrow = BundleRange { lower: 0, upper: 1 };
        let mut b = BundlesData {
            boundaries: vec![
                "0x00000000".into(),
                "0x00000001".into(),
                "0xffffffff".into(),
            ],
            num_bundles: 2,
        };
        assert!(matches!(
            split(&mut b, narrow, None),
            Err(MetadataError::Invalid(_))
        ));
        let wide = ranges(&b).unwrap()[1];
        assert!(split(&mut b, wide, Some(0x10)).is_ok());
    }

    #[test]
    fn malformed_boundaries_are_refused() {
        for boundaries in [
            vec!["0x00000000"],
            vec!["0x00000001", "0xffffffff"],
            vec!["0x00000000", "0x80000000"],
            vec!["0x00000000", "0x80000000", "0x80000000", "0xffffffff"],
            vec!["0x00000000", "zz", "0xffffffff"],
        ] {
            let b = BundlesData {
                boundaries: boundaries.iter().map(|s| s.to_string()).collect(),
                num_bundles: 0,
            };
            assert!(ranges(&b).is_err(), "{boundaries:?}");
        }
    }
}
