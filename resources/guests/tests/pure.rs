//! Host unit tests of the pure modules the guests are built from.

use vpmu_guests::cmdline::{parse_pair, parse_u64, Cmdline};
use vpmu_guests::fmt::{percent_tenths, Line};
use vpmu_guests::hist::{attribute, bar_len, tally, Range};
use vpmu_guests::layout::{detect, parse_expect, Kind, Regs};
use vpmu_guests::lfsr::{build_cycle, chase, step, Rng};

#[test]
fn cmdline_keys_flags_and_numbers() {
    let c = Cmdline::new(
        "  period=0x1000 profile=off  expect=intel:v2,gp4 verbose iters=10k period=2000 ",
    );
    assert_eq!(c.get("profile"), Some("off"));
    assert_eq!(c.get_u64("period"), Some(2000), "last occurrence wins");
    assert_eq!(c.get_u64("iters"), Some(10_000));
    assert_eq!(c.get("expect"), Some("intel:v2,gp4"));
    assert!(c.flag("verbose"));
    assert!(!c.flag("quiet"));
    assert_eq!(c.get("missing"), None);
    assert_eq!(c.u64_or("missing", 7), 7);
    assert_eq!(Cmdline::new("").get("x"), None);
}

#[test]
fn numbers_parse_strictly() {
    assert_eq!(parse_u64("0"), Some(0));
    assert_eq!(parse_u64("1_000_000"), Some(1_000_000));
    assert_eq!(parse_u64("0xFFff"), Some(0xffff));
    assert_eq!(parse_u64("3m"), Some(3_000_000));
    assert_eq!(parse_u64("2g"), Some(2_000_000_000));
    assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_u64("18446744073709551616"), None);
    assert_eq!(parse_u64("12a"), None);
    assert_eq!(parse_u64("0x"), None);
    assert_eq!(parse_u64(""), None);
    assert_eq!(parse_pair("0xc0:0x01"), Some((0xc0, 1)));
    assert_eq!(parse_pair("0xc0"), None);
}

#[test]
fn line_formatting() {
    let mut l = Line::new();
    l.s("a=")
        .u(0)
        .s(" b=")
        .u(u64::MAX)
        .s(" c=")
        .i(-42)
        .s(" d=")
        .x(0)
        .s(" e=")
        .x(0xdead_beef);
    assert_eq!(
        l.as_str(),
        "a=0 b=18446744073709551615 c=-42 d=0x0 e=0xdeadbeef"
    );
    l.clear();
    l.xw(0x1f, 4).s("|").u_right(42, 5).s("|").pad_to(12).s("x");
    assert_eq!(l.as_str(), "0x001f|   42|x");
    l.clear();
    l.pct(483, 1000)
        .s(" ")
        .pct(1, 3)
        .s(" ")
        .pct(0, 0)
        .s(" ")
        .pct(u64::MAX, u64::MAX);
    assert_eq!(l.as_str(), "48.3% 33.3% 0.0% 100.0%");
    assert_eq!(percent_tenths(2, 3), 667);
    // Overflowing text is dropped, not a panic.
    l.clear();
    for _ in 0..100 {
        l.s("abcd");
    }
    assert_eq!(l.len(), vpmu_guests::fmt::LINE_CAP);
}

#[test]
fn histogram_attribution() {
    let r = [
        Range {
            name: "a",
            start: 0x1000,
            end: 0x1100,
        },
        Range {
            name: "b",
            start: 0x1100,
            end: 0x1180,
        },
    ];
    assert_eq!(attribute(0x1000, &r), Some(0));
    assert_eq!(attribute(0x10ff, &r), Some(0));
    assert_eq!(attribute(0x1100, &r), Some(1));
    assert_eq!(attribute(0x1180, &r), None);
    assert_eq!(attribute(0xfff, &r), None);
    let mut counts = [9u64; 2];
    let other = tally(&[0x1000, 0x1001, 0x1150, 0x9999, 0], &r, &mut counts);
    assert_eq!(counts, [2, 1]);
    assert_eq!(other, 2);
    assert_eq!(bar_len(0, 10, 40), 0);
    assert_eq!(
        bar_len(1, 1000, 40),
        1,
        "non-zero count shows at least one mark"
    );
    assert_eq!(bar_len(10, 10, 40), 40);
    assert_eq!(bar_len(5, 10, 40), 20);
}

#[test]
fn sattolo_permutation_is_one_cycle() {
    for &n in &[1usize, 2, 3, 17, 1000, 4096] {
        let mut next = vec![0u32; n];
        build_cycle(&mut next, 12345 + n as u64);
        let mut seen = vec![false; n];
        let mut i = 0usize;
        for _ in 0..n {
            assert!(!seen[i], "slot {i} visited twice (n={n})");
            seen[i] = true;
            i = next[i] as usize;
        }
        assert_eq!(i, 0, "cycle closes after n steps");
        assert!(seen.iter().all(|&s| s));
        assert_eq!(chase(&next, n as u64), 0);
    }
    // Different seeds give different permutations.
    let (mut a, mut b) = (vec![0u32; 64], vec![0u32; 64]);
    build_cycle(&mut a, 1);
    build_cycle(&mut b, 2);
    assert_ne!(a, b);
}

#[test]
fn lfsr_and_rng() {
    let mut s = 1u64;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        s = step(s);
        assert_ne!(s, 0);
        assert!(seen.insert(s), "short period");
    }
    let mut r = Rng::new(0);
    for _ in 0..1000 {
        assert!(r.below(7) < 7);
    }
}

/// A canned CPUID table for `detect`.
fn table(entries: &[(u32, Regs)]) -> impl Fn(u32, u32) -> Regs + '_ {
    move |leaf, _| {
        entries
            .iter()
            .find(|e| e.0 == leaf)
            .map(|e| e.1)
            .unwrap_or([0; 4])
    }
}

const INTEL_VENDOR: Regs = [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]; // GenuineIntel
const AMD_VENDOR: Regs = [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]; // AuthenticAMD

#[test]
fn detect_intel_versions() {
    // v2: 4 GP x 48, 3 fixed x 48, PDCM set.
    let t = [
        (0, INTEL_VENDOR),
        (1, [0, 0, 1 << 15, 0]),
        (0xa, [0x0730_0402, 0, 0, 0x0603]),
    ];
    let l = detect(&table(&t));
    assert_eq!(l.kind, Kind::Intel);
    assert_eq!(
        (l.version, l.gp, l.gp_width, l.fixed, l.fixed_width),
        (2, 4, 48, 3, 48)
    );
    assert_eq!(l.fixed_mask, 0b111);
    assert!(l.pdcm && l.has_global());
    assert_eq!((l.ctl_msr(1), l.ctr_msr(1)), (0x187, 0xc2));
    // v1 ignores EDX.
    let t = [(0, INTEL_VENDOR), (0xa, [0x0728_0201, 0, 0, 0x0603])];
    let l = detect(&table(&t));
    assert_eq!((l.version, l.gp, l.gp_width, l.fixed), (1, 2, 40, 0));
    assert!(!l.has_global());
    // v5: ECX bitmap adds a non-contiguous fixed counter.
    let t = [(0, INTEL_VENDOR), (0xa, [0x0830_0805, 0, 0b1_0000, 0x0603])];
    let l = detect(&table(&t));
    assert_eq!(l.fixed_mask, 0b1_0111);
    assert!(l.fixed_ok(4) && !l.fixed_ok(3));
    assert_eq!(l.fixed_span(), 5);
    // Max leaf below 0xA, or version 0: no PMU.
    let t = [
        (0, [0x9, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
        (0xa, [0x0730_0402, 0, 0, 0x0603]),
    ];
    assert_eq!(detect(&table(&t)).kind, Kind::None);
    let t = [(0, INTEL_VENDOR)];
    assert_eq!(detect(&table(&t)).kind, Kind::None);
}

#[test]
fn detect_amd_flavours() {
    let t = [(0, AMD_VENDOR), (0x8000_0000, [0x8000_0022, 0, 0, 0])];
    let l = detect(&table(&t));
    assert_eq!((l.kind, l.gp, l.gp_width), (Kind::AmdLegacy, 4, 48));
    assert_eq!((l.ctl_msr(3), l.ctr_msr(3)), (0xc001_0003, 0xc001_0007));
    let t = [
        (0, AMD_VENDOR),
        (0x8000_0000, [0x8000_0022, 0, 0, 0]),
        (0x8000_0001, [0, 0, 1 << 23, 0]),
    ];
    let l = detect(&table(&t));
    assert_eq!((l.kind, l.gp), (Kind::AmdExt, 6));
    assert_eq!((l.ctl_msr(5), l.ctr_msr(5)), (0xc001_020a, 0xc001_020b));
    let t = [
        (0, AMD_VENDOR),
        (0x8000_0000, [0x8000_0022, 0, 0, 0]),
        (0x8000_0001, [0, 0, 1 << 23, 0]),
        (0x8000_0022, [1, 5, 0, 0]),
    ];
    let l = detect(&table(&t));
    assert_eq!((l.kind, l.gp, l.version), (Kind::AmdV2, 5, 2));
    assert!(l.has_global());
    // Leaf 0x80000022 beyond the max extended leaf is not consulted.
    let t = [
        (0, AMD_VENDOR),
        (0x8000_0000, [0x8000_0008, 0, 0, 0]),
        (0x8000_0022, [1, 5, 0, 0]),
    ];
    assert_eq!(detect(&table(&t)).kind, Kind::AmdLegacy);
}

#[test]
fn expect_strings() {
    let t = [(0, INTEL_VENDOR), (0xa, [0x0830_0805, 0, 0, 0x0604])];
    let l = detect(&table(&t));
    assert_eq!(
        parse_expect("intel:v5,gp8,fixed4,w48,fw48")
            .unwrap()
            .check(&l),
        Ok(())
    );
    assert_eq!(parse_expect("intel").unwrap().check(&l), Ok(()));
    assert_eq!(
        parse_expect("intel:gp4").unwrap().check(&l),
        Err(("gp", 4, 8))
    );
    assert_eq!(
        parse_expect("intel:fw32").unwrap().check(&l),
        Err(("fixed-width", 32, 48))
    );
    assert!(parse_expect("amd").unwrap().check(&l).is_err());
    assert!(parse_expect("none").unwrap().check(&l).is_err());
    assert!(parse_expect("intel:bogus").is_none());
    assert!(parse_expect("arm").is_none());
    assert!(parse_expect("none:gp1").is_none());
    let t = [
        (0, AMD_VENDOR),
        (0x8000_0000, [0x8000_0022, 0, 0, 0]),
        (0x8000_0001, [0, 0, 1 << 23, 0]),
        (0x8000_0022, [1, 6, 0, 0]),
    ];
    let l = detect(&table(&t));
    assert_eq!(parse_expect("amd:v2,gp6").unwrap().check(&l), Ok(()));
    assert_eq!(parse_expect("amd").unwrap().check(&l), Ok(()));
    assert!(parse_expect("amd:ext").unwrap().check(&l).is_err());
    let none = detect(&table(&[(0, INTEL_VENDOR)]));
    assert_eq!(parse_expect("none").unwrap().check(&none), Ok(()));
}

#[test]
fn images_are_elf64_x86_64_above_2mib() {
    for name in vpmu_guests::NAMES {
        let img = vpmu_guests::by_name(name).unwrap();
        assert_eq!(&img[..4], b"\x7fELF", "{name}");
        assert_eq!(img[4], 2, "{name}: ELF64");
        assert_eq!(u16::from_le_bytes([img[18], img[19]]), 62, "{name}: x86_64");
        let entry = u64::from_le_bytes(img[24..32].try_into().unwrap());
        assert!(entry >= 0x20_0000, "{name}: entry {entry:#x}");
    }
    assert!(vpmu_guests::by_name("nope").is_none());
}
