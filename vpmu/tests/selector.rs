//! Event-selector decoding and vetting.

use proptest::prelude::*;
use vpmu::selector::{
    self, bits, vet, vet_fixed_ctr_ctrl, EventSelector, SelectorFault, VetOptions,
};
use vpmu::Vendor;

const NO: VetOptions = VetOptions {
    allow_anythread: false,
    intel_in_tx: false,
};

/// Names of the boolean fields that are set, for comparing single-bit decodes.
fn flags(s: &EventSelector) -> Vec<&'static str> {
    let all = [
        ("usr", s.usr),
        ("os", s.os),
        ("edge", s.edge),
        ("pc", s.pc),
        ("int", s.int),
        ("any_thread", s.any_thread),
        ("en", s.en),
        ("inv", s.inv),
        ("in_tx", s.in_tx),
        ("in_txcp", s.in_txcp),
        ("guest_only", s.guest_only),
        ("host_only", s.host_only),
    ];
    all.iter().filter(|(_, v)| *v).map(|(n, _)| *n).collect()
}

#[test]
fn single_flag_bits_decode_to_their_field() {
    let cases: &[(u32, &[&str], &[&str])] = &[
        // bit, Intel fields, AMD fields
        (16, &["usr"], &["usr"]),
        (17, &["os"], &["os"]),
        (18, &["edge"], &["edge"]),
        (19, &["pc"], &[]),
        (20, &["int"], &["int"]),
        (21, &["any_thread"], &[]),
        (22, &["en"], &["en"]),
        (23, &["inv"], &["inv"]),
        (32, &["in_tx"], &[]),
        (33, &["in_txcp"], &[]),
        (40, &[], &["guest_only"]),
        (41, &[], &["host_only"]),
    ];
    for &(bit, intel, amd) in cases {
        let raw = 1u64 << bit;
        assert_eq!(
            flags(&EventSelector::decode(Vendor::Intel, raw)),
            intel,
            "intel bit {bit}"
        );
        assert_eq!(
            flags(&EventSelector::decode(Vendor::Amd, raw)),
            amd,
            "amd bit {bit}"
        );
    }
}

#[test]
fn event_umask_cmask_fields() {
    let raw = 0x5a00_0000u64 | 0x4f00 | 0x2e | (0x3 << 32);
    let i = EventSelector::decode(Vendor::Intel, raw);
    assert_eq!((i.event, i.umask, i.cmask), (0x2e, 0x4f, 0x5a));
    let a = EventSelector::decode(Vendor::Amd, raw);
    assert_eq!((a.event, a.umask, a.cmask), (0x32e, 0x4f, 0x5a));
    assert_eq!(selector::event_select(Vendor::Amd, raw), 0x32e);
    assert_eq!(selector::unit_mask(raw), 0x4f);
}

#[test]
fn intel_reserved_bits_are_63_32() {
    for bit in 0..64u32 {
        let raw = 1u64 << bit;
        let r = vet(Vendor::Intel, raw, &NO);
        if bit >= 32 {
            assert_eq!(
                r,
                Err(SelectorFault::Reserved {
                    vendor: Vendor::Intel,
                    raw,
                    mask: raw
                }),
                "bit {bit}"
            );
        } else {
            assert!(r.is_ok(), "bit {bit}");
        }
    }
}

#[test]
fn intel_in_tx_option_opens_bits_32_33_only() {
    let o = VetOptions {
        allow_anythread: false,
        intel_in_tx: true,
    };
    assert!(vet(Vendor::Intel, bits::IN_TX | bits::IN_TXCP, &o).is_ok());
    assert!(vet(Vendor::Intel, 1 << 34, &o).is_err());
    assert!(vet(Vendor::Intel, bits::IN_TX, &NO).is_err());
}

#[test]
fn amd_reserved_bits_and_fault_reports_only_offending_bits() {
    for bit in 0..64u32 {
        let raw = (1u64 << bit) | 0x4300c0;
        let reserved = bit >= 42 || (36..=39).contains(&bit) || bit == 21 || bit == 19;
        match vet(Vendor::Amd, raw, &NO) {
            Err(SelectorFault::Reserved { mask, .. }) => {
                assert!(reserved, "bit {bit} faulted");
                assert_eq!(mask, 1 << bit);
            }
            Ok(_) => assert!(!reserved, "bit {bit} accepted"),
        }
    }
}

#[test]
fn amd_host_guest_only_never_reach_the_guest() {
    let raw = 0x4300c0 | bits::HOST_ONLY | bits::GUEST_ONLY | (0x1 << 32);
    let v = vet(Vendor::Amd, raw, &NO).expect("valid");
    assert_eq!(v.guest_value, 0x1_0043_00c0);
    assert_eq!(v.hw_value, 0x1_0043_00c0 | bits::GUEST_ONLY);
    assert!(v.selector.host_only && v.selector.guest_only);
    // Neither bit written: hardware still gets Guest-Only.
    let v = vet(Vendor::Amd, 0x4300c0, &NO).expect("valid");
    assert_eq!(v.guest_value, 0x4300c0);
    assert_eq!(v.hw_value, 0x4300c0 | bits::GUEST_ONLY);
    assert_eq!(v.hw_value & bits::HOST_ONLY, 0);
}

#[test]
fn intel_anythread_is_denied_not_faulted_unless_allowed() {
    let raw = bits::EN | bits::ANY_THREAD | bits::OS | bits::USR | 0xc0;
    let v = vet(Vendor::Intel, raw, &NO).expect("not a #GP");
    assert!(v.anythread_denied);
    assert_eq!(v.guest_value, raw, "guest reads back what it wrote");
    assert_eq!(v.hw_value & (bits::EN | bits::ANY_THREAD), 0);
    assert_eq!(v.hw_value | bits::EN | bits::ANY_THREAD, raw);

    let allow = VetOptions {
        allow_anythread: true,
        intel_in_tx: false,
    };
    let v = vet(Vendor::Intel, raw, &allow).expect("valid");
    assert!(!v.anythread_denied);
    assert_eq!(v.hw_value, raw);
}

#[test]
fn fixed_ctr_ctrl_fields_and_reserved_bits() {
    // Counter 0: OS|USR|PMI (0xb), counter 1: USR (0x2), counter 2: OS (0x1).
    let raw = 0x12b;
    let c = vet_fixed_ctr_ctrl(raw, &fixed_model(5, 3), &NO).expect("valid");
    let f0 = c.field(0);
    assert!(f0.os && f0.usr && f0.pmi && !f0.any_thread);
    let f1 = c.field(1);
    assert!(!f1.os && f1.usr && !f1.pmi && f1.enabled());
    let f2 = c.field(2);
    assert!(f2.os && !f2.usr && f2.enabled());
    assert!(!c.field(3).enabled());
    assert!(!c.field(16).enabled());
    assert_eq!(c.hw_value, raw);
    assert_eq!(c.anythread_denied, 0);

    // A nibble for a counter the guest does not have.
    assert!(matches!(
        vet_fixed_ctr_ctrl(0x1000, &fixed_model(5, 3), &NO),
        Err(SelectorFault::Reserved { mask: 0x1000, .. })
    ));
    // AnyThread (bit 2 of a field) is reserved before version 3: the model's mask, the
    // same one the register file uses (they used to disagree).
    assert!(matches!(
        vet_fixed_ctr_ctrl(0x4, &fixed_model(2, 3), &NO),
        Err(SelectorFault::Reserved { mask: 0x4, .. })
    ));
    assert!(vet_fixed_ctr_ctrl(0x4, &fixed_model(3, 3), &NO).is_ok());
    assert_eq!(fixed_model(5, 4).fixed_ctrl_reserved(), !0xffff);
}

#[test]
fn fixed_ctr_ctrl_anythread_denies_that_counter_only() {
    let raw = 0x0b7; // counter 0: OS|USR|AnyThread, counter 1: OS|USR|PMI
    let c = vet_fixed_ctr_ctrl(raw, &fixed_model(5, 3), &NO).expect("valid");
    assert_eq!(c.anythread_denied, 0b1);
    assert_eq!(c.hw_value, 0x0b0);
    assert_eq!(c.raw, raw);
    let allow = VetOptions {
        allow_anythread: true,
        intel_in_tx: false,
    };
    let c = vet_fixed_ctr_ctrl(raw, &fixed_model(5, 3), &allow).expect("valid");
    assert_eq!((c.anythread_denied, c.hw_value), (0, raw));
}

proptest! {
    #[test]
    fn vet_is_total_and_consistent(raw in any::<u64>(), amd in any::<bool>(), any_ok in any::<bool>(), tx in any::<bool>()) {
        let vendor = if amd { Vendor::Amd } else { Vendor::Intel };
        let o = VetOptions { allow_anythread: any_ok, intel_in_tx: tx };
        let reserved = raw & o.reserved_mask(vendor);
        match vet(vendor, raw, &o) {
            Err(SelectorFault::Reserved { mask, .. }) => prop_assert_eq!(mask, reserved),
            Ok(v) => {
                prop_assert_eq!(reserved, 0);
                prop_assert_eq!(v.selector.event, selector::event_select(vendor, raw));
                // The event and unit mask reach hardware unchanged.
                prop_assert_eq!(v.hw_value & (0xffff | bits::AMD_EVENT_HI), raw & (0xffff | bits::AMD_EVENT_HI));
                if vendor == Vendor::Amd {
                    prop_assert_eq!(v.guest_value & (bits::HOST_ONLY | bits::GUEST_ONLY), 0);
                    prop_assert_eq!(v.hw_value & (bits::HOST_ONLY | bits::GUEST_ONLY), bits::GUEST_ONLY);
                    prop_assert!(!v.anythread_denied);
                } else {
                    prop_assert_eq!(v.guest_value, raw);
                    prop_assert_eq!(v.anythread_denied, raw & bits::ANY_THREAD != 0 && !any_ok);
                    if v.anythread_denied {
                        prop_assert_eq!(v.hw_value & bits::EN, 0);
                    }
                }
            }
        }
    }

    #[test]
    fn fixed_ctr_ctrl_vet_is_total(raw in any::<u64>(), n in 0u8..=20, version in 1u8..=5) {
        let m = fixed_model(version, n);
        let r = vet_fixed_ctr_ctrl(raw, &m, &NO);
        prop_assert_eq!(r.is_err(), raw & m.fixed_ctrl_reserved() != 0);
        if let Ok(c) = r {
            // hw_value never enables more than the guest asked for.
            prop_assert_eq!(c.hw_value & !raw, 0);
            for i in 0..m.num_fixed.min(16) {
                let any = c.field(i).any_thread;
                prop_assert_eq!(c.anythread_denied >> i & 1 == 1, any);
            }
        }
    }
}

fn fixed_model(version: u8, num_fixed: u8) -> vpmu::model::MsrModel {
    vpmu::model::MsrModel::new_clamped(&vpmu::PmuConfig::Intel(vpmu::IntelPmu {
        version,
        num_gp: 4,
        gp_width: 48,
        num_fixed,
        fixed_width: 48,
        events_unavailable: 0,
        events_len: 7,
        perf_capabilities: None,
    }))
}
