//! bench crate (skeleton).
