//! Checks the built guest images for instructions that fail when guest CPL0
//! code is emulated (SSE/AVX, popcnt, BMI, rdtscp, xsave, x87 waits, int3 as
//! code, ...). Uses `objdump` when the host has it; skips otherwise.

use std::io::Write;
use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "xmm",
    "ymm",
    "zmm",
    "popcnt",
    "rdtscp",
    "xsave",
    "xrstor",
    "xgetbv",
    "fwait",
    "fnstsw",
    "fnclex",
    "ldmxcsr",
    "stmxcsr",
    "crc32",
    "tzcnt",
    "lzcnt",
    "andn",
    "bextr",
    "blsi",
    "blsr",
    "blsmsk",
    "bzhi",
    "pdep",
    "pext",
    "sarx",
    "shlx",
    "shrx",
    "rorx",
    "cmpxchg16b",
    "vzeroupper",
    "invpcid",
    "clwb",
    "verw",
    "stac",
    "clac",
    "movbe",
    "rdpid",
];

#[test]
fn guests_avoid_instructions_unsupported_at_emulated_cpl0() {
    let tmp = std::env::temp_dir().join(format!("vpmu-guests-elf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for name in vpmu_guests::NAMES {
        let path = tmp.join(format!("{name}.elf"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(vpmu_guests::by_name(name).unwrap())
            .unwrap();
        let out = match Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&path)
            .output()
        {
            Ok(o) if o.status.success() => o,
            _ => {
                eprintln!("objdump unavailable: skipping instruction scan");
                return;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut bad = vec![];
        for line in text.lines() {
            // "  2000a0:\tmnemonic operands"
            let Some((_, insn)) = line.split_once(":\t") else {
                continue;
            };
            let insn = insn.trim();
            if insn.starts_with("int3") {
                continue; // linker padding between functions, never executed
            }
            let mnemonic = insn.split_whitespace().next().unwrap_or("");
            let hit = FORBIDDEN
                .iter()
                .any(|f| mnemonic == *f || (f.len() == 3 && f.ends_with("mm") && insn.contains(f)));
            if hit || mnemonic == "int" || mnemonic == "syscall" {
                bad.push(line.to_string());
            }
        }
        assert!(
            bad.is_empty(),
            "{name}: forbidden instructions:\n{}",
            bad.join("\n")
        );
        // No unwinding/formatting machinery from core either.
        assert!(
            !text.contains("pad_integral"),
            "{name}: core::fmt pulled in"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
