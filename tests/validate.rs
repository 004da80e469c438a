//! `vpmu-vmm validate` on this host: every step that should work works, and every mode the
//! probe calls unavailable is refused by the VMM with the probe's own reason.

#[macro_use]
mod common;
use common::*;

#[test]
fn validate_runs_what_it_can_and_refuses_the_rest() {
    need_kvm!("validate_runs_what_it_can_and_refuses_the_rest");
    let dir = scratch("validate");
    let dir_s = dir.to_string_lossy().into_owned();
    let o = vmm(&["validate", "--out", &dir_s]);
    let s = out(&o);
    assert_eq!(status(&o), 0, "{s}\n{}", err(&o));
    assert!(
        s.starts_with("validate: vendor PMU models run end to end here"),
        "{s}"
    );
    let rep: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("validate.json")).expect("validate.json"),
    )
    .expect("JSON");
    let md = std::fs::read_to_string(dir.join("validate.md")).expect("validate.md");
    assert!(md.contains("| conformance: off | Passed |"), "{md}");
    let steps = rep["steps"].as_array().expect("steps");
    let step = |name: &str| {
        steps
            .iter()
            .find(|st| st["name"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {rep}"))
    };
    let host_vendor = rep["probe"]["host"]["vendor"].as_str().unwrap_or("?");
    if host_vendor == "intel" || host_vendor == "amd" {
        let st = step(&format!("conformance: userspace, {host_vendor} PMU model"));
        assert_eq!(st["verdict"], "passed", "{st}");
    }
    for mode in ["emulated", "passthrough"] {
        let st = step(&format!("conformance: {mode}"));
        let m = rep["probe"]["modes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mode"] == mode)
            .unwrap();
        if m["availability"]["status"] == "available" {
            assert_eq!(st["verdict"], "passed", "{st}");
        } else {
            assert_eq!(st["verdict"], "refused", "{st}");
            assert_eq!(st["detail"], m["availability"]["reason"], "{st}");
        }
    }
    assert!(!steps.iter().any(|st| st["verdict"] == "failed"), "{rep}");
}
