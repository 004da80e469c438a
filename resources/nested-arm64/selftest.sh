#!/usr/bin/env bash
# Self-test of the arm64 nested rig, for scripts/test.sh (not wired in yet) or by hand:
#   1. l1-kvm-pmu   L1 boots; "NESTED: kvm ready (kvm-arm ...)", L1's PMUv3 ("hw perfevents"),
#                   and `perf stat -e cycles,instructions` in L1 counts both (> 1e7)
#   2. l2-qemu-perf (L1 built --with-qemu) QEMU-KVM in L1 boots the L2 arm64 image; in L2,
#                   `perf stat -e cycles,instructions` counts both, `perf record -e cycles`
#                   + `perf report` name the vpmu_work_* functions; perf.data comes back
#                   through a virtio-blk disk (--disk-out) as a tar archive, and (when the
#                   host has perf) the host's `perf report --symfs` names them too
#   3. l2-vpmu-vmm  when the aarch64 vpmu-vmm binary exists (scripts/cross-aarch64.sh):
#                   vpmu-vmm boots L2 and the command exits 0; otherwise "SKIPPED: ..."
# usage: resources/nested-arm64/selftest.sh [--no-build] [--keep-logs DIR]
# Prints "ARM64-RIG: ok <check> (<s> s)", "ARM64-RIG: FAIL <check>: <why>" (and the log),
# "SKIPPED: <check>: <why>". Exit status: 0 all ran checks passed, 1 a check failed,
# 104 prerequisites missing. VPMU_SKIP_NESTED=<reason> skips everything (exit 0), like the
# x86 nested tests. Takes ~25-60 s of QEMU TCG on a 2-core machine (+ a first build).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RUN=$HERE/run.sh
WORK=${VPMU_NESTED_ARM64_WORK:-$HERE/work}

build=1
keep=
while [ $# -gt 0 ]; do
	case "$1" in
	--no-build) build=0; shift ;;
	--keep-logs) keep=$2; shift 2 ;;
	-h | --help) sed -n '2,16p' "$0"; exit 0 ;;
	*) echo "ARM64-RIG: error: unknown argument $1" >&2; exit 104 ;;
	esac
done
if [ -n "${VPMU_SKIP_NESTED:-}" ]; then
	echo "SKIPPED: arm64 nested rig: $VPMU_SKIP_NESTED"
	exit 0
fi

if ! "$REPO/scripts/setup-arm64.sh" --check >/dev/null; then
	if [ "$(id -u)" = 0 ]; then
		"$REPO/scripts/setup-arm64.sh" >/dev/null
	else
		"$REPO/scripts/setup-arm64.sh" --check >&2 || true
		echo "ARM64-RIG: error: prerequisites missing: run scripts/setup-arm64.sh as root" >&2
		exit 104
	fi
fi
if [ "$build" = 1 ]; then
	"$HERE/build-l1.sh" --with-qemu >&2 || { echo "ARM64-RIG: error: build-l1.sh failed" >&2; exit 104; }
fi

logs=$(mktemp -d "${TMPDIR:-/tmp}/vpmu-arm64-selftest.XXXXXX")
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	if [ -n "$keep" ]; then mkdir -p "$keep" && cp -r "$logs"/. "$keep"/; fi
	rm -rf "$logs"
}
trap cleanup EXIT
failed=0
t0=0
start() { t0=$(date +%s.%N); }
secs() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
ok() { echo "ARM64-RIG: ok $1 ($(secs) s)"; }
fail() { # CHECK WHY LOG
	echo "ARM64-RIG: FAIL $1: $2"
	[ ! -f "${3:-}" ] || sed '/^NESTED: disk-out begin$/,/^NESTED: disk-out end$/{/^NESTED: /!d}; s/^/    | /' "$3"
	failed=1
}
# count EVENT LOG: the first perf stat count of EVENT ("  123,456  cycles"), digits only
count() { sed -n "s/^ *\\([0-9][0-9,.]*\\) *$1 .*/\\1/p; s/^ *\\([0-9][0-9,.]*\\) *$1\$/\\1/p" "$2" | head -n1 | tr -d ',.'; }
big() { [ -n "$1" ] && [ "$1" -gt 10000000 ]; }

# 1. L1: KVM and the PMU
start
log=$logs/l1.log
st=0
"$RUN" --quiet --timeout 180 --log "$log" \
	--l1-cmd 'test -c /dev/kvm && perf stat -e cycles,instructions /bin/vpmu-work 0.1' || st=$?
c=$(count cycles "$log") i=$(count instructions "$log")
if [ "$st" != 0 ]; then fail l1-kvm-pmu "run.sh exit $st" "$log"
elif ! grep -q '^NESTED: kvm ready (kvm-arm' "$log"; then fail l1-kvm-pmu "no 'NESTED: kvm ready (kvm-arm ...)'" "$log"
elif ! grep -q '^NESTED: L1 PMU: hw perfevents: enabled' "$log"; then fail l1-kvm-pmu "L1 has no PMU" "$log"
elif ! big "$c" || ! big "$i"; then fail l1-kvm-pmu "perf stat in L1: cycles '$c', instructions '$i' (want > 1e7)" "$log"
else ok l1-kvm-pmu; fi

# 2. L2 under QEMU-KVM in L1: vPMU, perf record, a disk back to the host
start
log=$logs/l2-qemu.log
disk=$logs/disk.img
st=0
if [ -e "$REPO/resources/out/cache/stage-arm64-l1-qemu/usr/bin/qemu-system-aarch64" ] &&
	[ "$(cat "$WORK/l1/stage" 2>/dev/null)" = "$REPO/resources/out/cache/stage-arm64-l1-qemu" ]; then
	"$RUN" --quiet --timeout 300 --log "$log" --l2-vmm qemu --disk-out "$disk" --disk-size 8 \
		--guest-cmd 'cd /tmp && perf stat -e cycles,instructions /bin/vpmu-work 0.2 &&
perf record -e cycles -c 1000000 -o perf.data /bin/vpmu-work 0.2 && perf report -i perf.data --stdio | grep vpmu_work &&
tar -cf /dev/vda perf.data && sync' || st=$?
	c=$(count cycles "$log") i=$(count instructions "$log")
	syms=$(grep -c -E '\[\.\] vpmu_work_(integer_mix|memory_walk|branchy)\s*$' "$log" || true)
	if [ "$st" != 0 ]; then fail l2-qemu-perf "run.sh exit $st" "$log"
	elif ! grep -q '^VPMU-GUEST: init reached .*cpus=1' "$log"; then fail l2-qemu-perf "L2 never reached /init" "$log"
	elif ! big "$c" || ! big "$i"; then fail l2-qemu-perf "perf stat in L2: cycles '$c', instructions '$i' (want > 1e7)" "$log"
	elif [ "$syms" -lt 3 ]; then fail l2-qemu-perf "perf report in L2 lacks the vpmu_work_* symbols" "$log"
	elif ! grep -q '^VPMU-GUEST: command exit 0' "$log"; then fail l2-qemu-perf "the L2 command failed" "$log"
	elif ! tar -xf "$disk" -C "$logs" perf.data 2>/dev/null; then fail l2-qemu-perf "no perf.data in the disk that came back" "$log"
	else
		hsyms=3
		if command -v perf >/dev/null; then
			mkdir -p "$logs/symfs/bin"
			cp "$REPO/resources/out/linux-arm64/vpmu-work" "$logs/symfs/bin/"
			hsyms=$(perf report -i "$logs/perf.data" --symfs "$logs/symfs" --stdio 2>/dev/null | grep -c ' vpmu_work_' || true)
		fi
		if [ "$hsyms" -lt 3 ]; then fail l2-qemu-perf "the host's perf report of the returned perf.data lacks the symbols" "$log"
		else ok l2-qemu-perf; fi
	fi
else
	echo "SKIPPED: l2-qemu-perf: L1 was built without --with-qemu"
fi

# 3. vpmu-vmm itself (once it has an aarch64 backend)
start
log=$logs/l2-vpmu-vmm.log
vmm=${VPMU_VMM_ARM64:-$REPO/target-aarch64/aarch64-unknown-linux-gnu/release/vpmu-vmm}
if [ -x "$vmm" ]; then
	st=0
	"$RUN" --quiet --timeout 300 --log "$log" --vmm "$vmm" --guest-cmd 'true' -- --memory 512M || st=$?
	if [ "$st" != 0 ]; then fail l2-vpmu-vmm "vpmu-vmm exit $st" "$log"
	elif ! grep -q '^VPMU-GUEST: command exit 0' "$log"; then fail l2-vpmu-vmm "no 'VPMU-GUEST: command exit 0'" "$log"
	else ok l2-vpmu-vmm; fi
else
	echo "SKIPPED: l2-vpmu-vmm: no aarch64 vpmu-vmm at $vmm (build it: scripts/cross-aarch64.sh)"
fi

exit "$failed"
