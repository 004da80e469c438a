//! devices crate (skeleton).
