//! The NetworkPolicy conformance runner (shared/CONFORMANCE.md). Being written.
