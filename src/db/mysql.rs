//! MySQL backend (placeholder until implemented).
