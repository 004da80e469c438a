//! arch crate (skeleton).
