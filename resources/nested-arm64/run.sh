#!/usr/bin/env bash
# The arm64 nested rig: runs an aarch64 vpmu-vmm inside an arm64 L1 Linux that QEMU emulates
# (TCG: qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu max,pauth-impdef=on
# -icount shift=0 -m 2G -smp 2), whose KVM (VHE, with a PMUv3 host PMU) boots the L2 arm64
# Linux image (resources/linux/build-image.sh --arch arm64).
#
# usage: resources/nested-arm64/run.sh [options] -- <vpmu-vmm args...>
#        resources/nested-arm64/run.sh [options] --guest-cmd CMD [-- <extra vpmu-vmm args...>]
#        resources/nested-arm64/run.sh [options] --l1-cmd SHELL-CMD
#        resources/nested-arm64/run.sh [options] --l2-vmm qemu --guest-cmd CMD [-- <extra QEMU args>]
# This is resources/nested/run.sh --arch arm64: the same options, markers ("NESTED: ...")
# and exit statuses (vpmu-vmm's; 100 no status from L1, 102 timeout, 104 usage error); see
# resources/nested/run.sh --help and docs/NESTED.md. Build L1 first:
#   scripts/setup-arm64.sh && resources/nested-arm64/build-l1.sh [--with-qemu]
# vpmu-vmm: --vmm PATH, $VPMU_VMM_ARM64, else target-aarch64/aarch64-unknown-linux-gnu/
# {release,debug}/vpmu-vmm (scripts/cross-aarch64.sh).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "${1:-}" in -h | --help) sed -n '2,17p' "$0"; exit 0 ;; esac
exec "$HERE/../nested/run.sh" --arch arm64 "$@"
