//! Conformance suite (placeholder until implemented).
