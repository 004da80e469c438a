//! `vpmu-vmm policy check FILE [--vendor intel|amd] [--fixed N]`: what an operator policy
//! compiles to (vpmu::policy::check_report), without starting a VM or needing /dev/kvm.

use std::path::Path;

use vpmu::Vendor;

/// The report for `vendor` (both vendors when `None`), or the error to print.
pub fn check(path: &Path, vendor: Option<&str>, fixed: u8) -> Result<String, String> {
    let vendors = match vendor {
        None => vec![Vendor::Intel, Vendor::Amd],
        Some("intel") => vec![Vendor::Intel],
        Some("amd") => vec![Vendor::Amd],
        Some(v) => return Err(format!("--vendor {v}: expected intel or amd")),
    };
    let policy = vmm::pmu::setup::read_policy_file(path).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for v in vendors {
        let report = vpmu::policy::check_report(&policy, v, fixed)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&report);
    }
    Ok(out)
}
