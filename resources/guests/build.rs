//! Builds each freestanding guest from `guest/<name>.rs` by invoking rustc
//! directly for the host x86_64 target with our own linker script (the guests
//! are not cargo targets: they are `#![no_std]`, `#![no_main]` ELF images).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[&str] = &["demo", "conformance", "bench", "echo"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let src = manifest.join("guest");
    let script = src.join("link.ld");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
    for entry in walk(&src) {
        println!("cargo:rerun-if-changed={}", entry.display());
    }

    for name in GUESTS {
        let input = src.join(format!("{name}.rs"));
        let elf = out.join(format!("{name}.elf"));
        let status = Command::new(&rustc)
            // The guests must not inherit flags meant for host code
            // (coverage, sanitizers, -C target-cpu=native, ...).
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .args(["--edition", "2021", "--crate-type", "bin"])
            .args(["--target", "x86_64-unknown-linux-gnu"])
            .args(["-C", "opt-level=2"])
            .args(["-C", "panic=abort"])
            .args(["-C", "relocation-model=static"])
            .args(["-C", "code-model=small"])
            .args(["-C", "target-feature=-sse,-sse2,-sse3,-ssse3,-sse4.1,-sse4.2,-avx,-avx2,-popcnt,-bmi1,-bmi2,+soft-float"])
            .args(["-C", "debuginfo=0"])
            .args(["-C", "strip=debuginfo"])
            .args(["-C", "link-arg=-nostdlib"])
            .args(["-C", "link-arg=-static"])
            .args(["-C", "link-arg=-no-pie"])
            .arg("-C")
            .arg(format!("link-arg=-Wl,-T{}", script.display()))
            .args(["-C", "link-arg=-Wl,--build-id=none"])
            .args(["-C", "link-arg=-Wl,-z,noexecstack"])
            .args(["--cap-lints", "allow", "-A", "warnings"])
            .arg(&input)
            .arg("-o")
            .arg(&elf)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
        assert!(status.success(), "building guest {name} failed");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}
