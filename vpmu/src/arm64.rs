//! The arm64 vPMU's pure parts (arch-neutral, unit-tested on every host): PMUv3 events by
//! name ([`events`]), KVM's arm64 event filter ([`filter`]) and the arm64 allowlist
//! ([`policy`], the TOML format of docs/POLICY.md with PMUv3 events).

pub mod cpulist;
pub mod events;
pub mod filter;
pub mod policy;
