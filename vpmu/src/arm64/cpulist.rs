//! Linux CPU lists (`0-3,6,8-9`, as in `/sys/bus/event_source/devices/<pmu>/cpus`): which
//! CPUs a host PMU covers. With several host PMUs (big.LITTLE), KVM_ARM_VCPU_PMU_V3_SET_PMU
//! restricts the VM to that PMU's CPUs (pmu-emul.c `kvm_arm_pmu_v3_set_pmu`:
//! `cpumask_copy(kvm->arch.supported_cpus, &arm_pmu->supported_cpus)`; a vCPU run elsewhere
//! fails with KVM_EXIT_FAIL_ENTRY), so the VMM pins its vCPU threads to them.

/// Parses a CPU list; `None` when malformed (or a range runs backwards or past 4095).
pub fn parse(s: &str) -> Option<Vec<usize>> {
    let mut v = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let n: usize = part.trim().parse().ok()?;
                (n, n)
            }
        };
        if a > b || b > 4095 {
            return None;
        }
        v.extend(a..=b);
    }
    v.sort_unstable();
    v.dedup();
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn lists() {
        assert_eq!(parse("0-3\n"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse("4-5,7"), Some(vec![4, 5, 7]));
        assert_eq!(parse("0"), Some(vec![0]));
        assert_eq!(parse(""), Some(vec![]));
        assert_eq!(parse("3-1"), None);
        assert_eq!(parse("x"), None);
        assert_eq!(parse("0-99999"), None);
    }
}
