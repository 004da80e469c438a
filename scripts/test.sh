#!/usr/bin/env bash
# The project's one test command (README, .ci/run): installs what the tests need, then
# runs formatting, lints, and every test in the workspace (unit, property, integration
# under /dev/kvm, and the nested-KVM Linux tests under QEMU TCG: x86 and arm64, the latter
# with the aarch64 vpmu-vmm cross-built by scripts/cross-aarch64.sh).
#
#   bash scripts/test.sh            # everything
#   QUICK=1 bash scripts/test.sh    # skip the nested Linux tests (they print why)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
command -v cpio >/dev/null 2>&1 || need_apt+=(cpio)
command -v lz4 >/dev/null 2>&1 || need_apt+=(lz4)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
if [ "${QUICK:-0}" != 1 ] && [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  fi
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt 2>/dev/null || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo build --release"
cargo build --workspace --release
if [ "${QUICK:-0}" = 1 ]; then
  export VPMU_SKIP_NESTED="QUICK=1 was set"
elif [ -z "${VPMU_SKIP_ARM64:-}" ]; then
  # The arm64 rig (tests/linux_arm64.rs): Debian's arm64 packages, then the aarch64 build.
  # Without the packages (not root, no sudo) those tests skip and say why.
  if ! scripts/setup-arm64.sh --check >/dev/null 2>&1 && ! scripts/setup-arm64.sh; then
    export VPMU_SKIP_ARM64="scripts/setup-arm64.sh could not install the arm64 packages (run it as root)"
    echo "== arm64: $VPMU_SKIP_ARM64"
  else
    echo "== scripts/cross-aarch64.sh (aarch64 vpmu-vmm)"
    scripts/cross-aarch64.sh
  fi
fi
echo "== cargo test"
cargo test --workspace --release -- --test-threads=2
echo "== vpmu-vmm validate (what this host's vPMU can do; the summary names the vendor models that ran)"
target/release/vpmu-vmm validate --out target/validate
if [ "${QUICK:-0}" != 1 ] && [ -z "${VPMU_SKIP_ARM64:-}" ]; then
  echo "== vpmu-vmm bench --linux --linux-arch arm64 --quick (off vs emulated in the arm64 rig, TCG-labelled)"
  target/release/vpmu-vmm bench --linux --linux-arch arm64 --quick --modes emulated --no-progress \
    --out target/bench-arm64
  python3 - target/bench-arm64/linux.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
bad = [(m["mode"], m["status"], m.get("reason")) for m in r["modes"] if m["status"] != "ok"]
cells = [c for c in r["cells"] if c["status"] != "ok"]
if bad or cells or len(r["modes"]) != 2:
    sys.exit(f"arm64 bench: modes {bad}, {len(cells)} failed cells")
print("arm64 bench: off and emulated ran every activity (target/bench-arm64/linux.md)")
PY
fi
