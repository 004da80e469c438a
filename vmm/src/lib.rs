//! vmm crate (skeleton).
