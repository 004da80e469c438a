//! Freestanding guest images for vpmu-vmm, built from `guest/*.rs` by
//! `build.rs` (see docs/GUESTS.md for the boot contract, the command-line
//! keys and the output formats).
//!
//! The pure helper modules the guests use (command-line parsing, number
//! formatting, histogram attribution, PRNG/permutation, PMU layout decoding)
//! are compiled into this library too so that they are unit-tested on the
//! host.

#[path = "../guest/pure/cmdline.rs"]
pub mod cmdline;
#[path = "../guest/pure/fmt.rs"]
pub mod fmt;
#[path = "../guest/pure/hist.rs"]
pub mod hist;
#[path = "../guest/pure/layout.rs"]
pub mod layout;
#[path = "../guest/pure/lfsr.rs"]
pub mod lfsr;

/// The demo guest: banner, PMU description, CPL3 workload, cycles profile.
pub const DEMO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"));
/// The TAP-style PMU conformance suite.
pub const CONFORMANCE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/conformance.elf"));
/// The overhead benchmark guest.
pub const BENCH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench.elf"));
/// An interactive console guest (echoes lines; tests the terminal and input paths).
pub const ECHO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo.elf"));

/// Names accepted by [`by_name`] (and by `--kernel builtin:NAME`).
pub const NAMES: &[&str] = &["demo", "conformance", "bench", "echo"];

/// The ELF image of a built-in guest.
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    match name {
        "demo" => Some(DEMO),
        "conformance" => Some(CONFORMANCE),
        "bench" => Some(BENCH),
        "echo" => Some(ECHO),
        _ => None,
    }
}
