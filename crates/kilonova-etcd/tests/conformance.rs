#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `MetadataStore` conformance suite on a real etcd (one per case).
//! Without an `etcd` binary the cases skip, or fail with KILONOVA_REQUIRE_ETCD=1.

mod support;

kilonova_metadata::conformance_tests!(optional support::store_or_skip("conformance"));
