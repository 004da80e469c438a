//! Freestanding guest images.
