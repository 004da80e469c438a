#!/usr/bin/env bash
# Runs vpmu-vmm inside an L1 Linux guest that QEMU emulates (TCG) with nested SVM, so that
# vpmu-vmm gets a real /dev/kvm even where the host's KVM cannot run a Linux guest.
# With --arch arm64 (what resources/nested-arm64/run.sh passes): an aarch64 vpmu-vmm inside
# an arm64 L1 (qemu-system-aarch64 -M virt,virtualization=on: EL2, KVM in VHE mode, PMUv3).
#
# usage: resources/nested/run.sh [options] -- <vpmu-vmm args...>
#        resources/nested/run.sh [options] --guest-cmd CMD [-- <extra vpmu-vmm args...>]
#        resources/nested/run.sh [options] --l1-cmd SHELL-CMD
# options:
#   --arch ARCH         x86_64 (default) or arm64: which rig (arm64: built by
#                       resources/nested-arm64/build-l1.sh into resources/nested-arm64/work,
#                       or $VPMU_NESTED_ARM64_WORK)
#   --vmm PATH          vpmu-vmm binary to run in L1 (default: $VPMU_VMM, else the newest of
#                       target-h5/release, target/release, target/debug; arm64:
#                       $VPMU_VMM_ARM64, else target-aarch64/aarch64-unknown-linux-gnu/
#                       {release,debug}/vpmu-vmm from scripts/cross-aarch64.sh)
#   --guest-cmd CMD     boot the L2 Linux image and run CMD in it: the vpmu-vmm args become
#                       run --kernel /l2/bzImage --initrd /l2/initramfs.cpio.gz
#                           --cmdline "<L2 cmdline> vpmu.cmd=<base64 CMD>"  <extra args>
#                       (arm64: --kernel /l2/Image)
#   --l2-vmm qemu       arm64 only, L1 built with --with-qemu: --guest-cmd boots L2 with
#                       QEMU-KVM in L1 instead of vpmu-vmm (a stand-in to check the rig):
#                         qemu-system-aarch64 -M virt,gic-version=3 -cpu host -accel kvm
#                           -m 512M -smp 1 ... -kernel /l2/Image -initrd ... -append
#                           "<l2-cmdline-qemu> vpmu.cmd=..."  <extra args>
#   --l2-cmdline STR    L2 kernel command line for --guest-cmd (default: /l2/cmdline, i.e.
#                       resources/out/linux/cmdline)
#   --l2-append STR     appended to the L2 kernel command line (e.g. "reboot=k")
#   --l2-kernel PATH    L2 kernel for --guest-cmd, a path in L1 (default /l2/bzImage, the
#                       cloud kernel; /l2/bzImage-generic: the generic Debian kernel)
#   --l1-cmd CMD        run a shell command in L1 instead of vpmu-vmm (rig checks, debugging,
#                       several vpmu-vmm runs in one L1 boot); /bin/vpmu-vmm is there too
#                       when a binary was found or given with --vmm
#   --file PATH         copy a host file into L1 as /files/<name> (repeatable), e.g. a policy
#   --disk-out FILE     give L2 a virtio-blk disk and bring it back: L1 creates an empty
#                       /l2/disk.img (--disk-size MB, default 16) before vpmu-vmm runs
#                       (--guest-cmd adds "--disk /l2/disk.img" itself; with -- pass it),
#                       then prints it gzip+base64 on its console; the image lands in FILE
#   --cpus N            L1 vCPUs (QEMU -smp; default 1, arm64: 2)
#   --qemu-cpu MODEL    QEMU CPU model (default EPYC; also works: qemu64,+svm,+npt and max;
#                       arm64: max,pauth-impdef=on)
#   --memory MB         L1 memory in MiB (default 2048)
#   --timeout S         whole-run limit in seconds (default 300)
#   --log FILE          also write the console log (CR stripped) to FILE
#   --quiet             do not stream the console to stdout
#   --interactive       QEMU on this terminal (stdin must be one): type into L1/L2. With
#                       --guest-cmd, L2 runs CMD and then gives a shell on its console
#                       (vpmu.exit=shell); `exit` in it ends the run. vpmu-vmm in L1 puts
#                       the console in raw mode (one echo, Ctrl-C reaches L2's program);
#                       Ctrl-A x there stops L2. No time limit unless --timeout is given
# In L1, vpmu-vmm runs in /l2 with the L2 image at /l2/bzImage (arm64: /l2/Image),
# /l2/initramfs.cpio.gz.
# Exit status: vpmu-vmm's (or --l1-cmd's) exit status, taken from the line
# "NESTED: vpmu-vmm exit <n>"; else 100 = L1 ended without reporting one, 102 = timeout,
# 104 = usage or prerequisite error (with a "nested-rig: error:" message on stderr).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

usage_error() {
	echo "nested-rig: error: $*" >&2
	exit 104
}

arch=x86_64
vmm=
guest_cmd=
guest_mode=0
l2_cmdline=
l2_kernel=
l2_append=
l2_vmm=vpmu-vmm
l1_cmd=
files=()
cpus=
qemu_cpu=
memory=2048
timeout_s=
interactive=0
log=
disk_out=
disk_size=16
quiet=0
while [ $# -gt 0 ]; do
	case "$1" in
	--arch) arch=$2; shift 2 ;;
	--vmm) vmm=$2; shift 2 ;;
	--guest-cmd) guest_cmd=$2; guest_mode=1; shift 2 ;;
	--l2-cmdline) l2_cmdline=$2; shift 2 ;;
	--l2-kernel) l2_kernel=$2; shift 2 ;;
	--l2-append) l2_append=$2; shift 2 ;;
	--l2-vmm) l2_vmm=$2; shift 2 ;;
	--l1-cmd) l1_cmd=$2; shift 2 ;;
	--file) files+=("$2"); shift 2 ;;
	--cpus) cpus=$2; shift 2 ;;
	--qemu-cpu) qemu_cpu=$2; shift 2 ;;
	--memory) memory=$2; shift 2 ;;
	--timeout) timeout_s=$2; shift 2 ;;
	--log) log=$2; shift 2 ;;
	--quiet) quiet=1; shift ;;
	--disk-out) disk_out=$2; shift 2 ;;
	--disk-size) disk_size=$2; shift 2 ;;
	--interactive) interactive=1; shift ;;
	-h | --help) sed -n '2,56p' "$0"; exit 0 ;;
	--) shift; break ;;
	*) usage_error "unknown argument: $1 (see --help)" ;;
	esac
done
vmm_args=("$@")
if [ "$interactive" = 1 ]; then
	[ -t 0 ] || usage_error "--interactive needs a terminal on stdin"
	timeout_s=${timeout_s:-0} # 0: no limit
else
	timeout_s=${timeout_s:-300}
fi
if [ -z "$l1_cmd" ] && [ "$guest_mode" = 0 ] && [ "${#vmm_args[@]}" -eq 0 ]; then
	usage_error "nothing to run: give -- <vpmu-vmm args>, --guest-cmd CMD or --l1-cmd CMD"
fi
# What differs between the rigs.
case "$arch" in
x86_64 | amd64)
	arch=x86_64
	WORK=${VPMU_NESTED_WORK:-$HERE/work}
	build_l1=resources/nested/build-l1.sh
	qemu_bin="qemu-system-x86_64"
	qemu_pkg="qemu-system-x86"
	l1_kernel=$WORK/l1/vmlinuz
	: "${l2_kernel:=/l2/bzImage}" "${cpus:=1}" "${qemu_cpu:=EPYC}" "${vmm:=${VPMU_VMM:-}}"
	vmm_candidates=("$REPO/target-h5/release/vpmu-vmm" "$REPO/target/release/vpmu-vmm" "$REPO/target/debug/vpmu-vmm")
	vmm_build="cargo build --release"
	elf_machine='Advanced Micro Devices X86-64'
	;;
arm64 | aarch64)
	arch=arm64
	WORK=${VPMU_NESTED_ARM64_WORK:-$REPO/resources/nested-arm64/work}
	build_l1=resources/nested-arm64/build-l1.sh
	qemu_bin="qemu-system-aarch64"
	qemu_pkg="qemu-system-arm"
	l1_kernel=$WORK/l1/Image
	: "${l2_kernel:=/l2/Image}" "${cpus:=2}" "${qemu_cpu:=max,pauth-impdef=on}" "${vmm:=${VPMU_VMM_ARM64:-}}"
	vmm_candidates=("$REPO/target-aarch64/aarch64-unknown-linux-gnu/release/vpmu-vmm"
		"$REPO/target-aarch64/aarch64-unknown-linux-gnu/debug/vpmu-vmm")
	vmm_build="scripts/cross-aarch64.sh"
	elf_machine=AArch64
	;;
*) usage_error "--arch $arch: x86_64 or arm64" ;;
esac
case "$l2_vmm" in
vpmu-vmm) ;;
qemu)
	[ "$arch" = arm64 ] || usage_error "--l2-vmm qemu is for --arch arm64 only"
	[ "$guest_mode" = 1 ] || usage_error "--l2-vmm qemu goes with --guest-cmd"
	;;
*) usage_error "--l2-vmm $l2_vmm: vpmu-vmm or qemu" ;;
esac
command -v "$qemu_bin" >/dev/null ||
	usage_error "$qemu_bin not found (apt-get install $qemu_pkg, or run $build_l1)"
for f in "$l1_kernel" "$WORK/l1/base.cpio" "$WORK/l1/l2-cmdline"; do
	[ -f "$f" ] || usage_error "$f missing: run $build_l1 first"
done
if [ -z "$vmm" ]; then
	for c in "${vmm_candidates[@]}"; do
		if [ -x "$c" ] && { [ -z "$vmm" ] || [ "$c" -nt "$vmm" ]; }; then vmm=$c; fi
	done
fi
if { [ -z "$l1_cmd" ] && [ "$l2_vmm" = vpmu-vmm ]; } || [ -n "$vmm" ]; then
	[ -n "$vmm" ] || usage_error "no vpmu-vmm binary (build it: $vmm_build, or pass --vmm PATH)"
	[ -x "$vmm" ] || usage_error "$vmm is not an executable file"
	if [ "$arch" = arm64 ]; then
		# the L1 CPU cannot run another architecture's binary: say so before booting L1
		machine=$(LC_ALL=C readelf -h "$vmm" 2>/dev/null | sed -n 's/^ *Machine: *//p')
		[ "$machine" = "$elf_machine" ] ||
			usage_error "$vmm is not an $elf_machine ELF binary (${machine:-not ELF}): build it with $vmm_build"
	fi
fi

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/vpmu-nested-run.XXXXXX")
trap 'rm -rf "$run_dir"' EXIT
root=$run_dir/root
mkdir -p "$root/bin" "$root/files"

# shell-quote for the busybox sh in L1: 'it'\''s'
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

{
	echo '#!/bin/sh'
	echo 'cd /l2'
	if [ -n "$disk_out" ]; then
		printf 'truncate -s %sM /l2/disk.img\n' "$((disk_size))"
	fi
	if [ -n "$l1_cmd" ]; then
		printf 'echo "NESTED: running L1 command"\n'
		printf 'sh -c %s\n' "$(q "$l1_cmd")"
	else
		args=()
		line='/bin/vpmu-vmm'
		if [ "$guest_mode" = 1 ]; then
			if [ -z "$l2_cmdline" ]; then
				if [ "$l2_vmm" = qemu ]; then
					[ -f "$WORK/l1/l2-cmdline-qemu" ] || usage_error "$WORK/l1/l2-cmdline-qemu missing: run $build_l1"
					l2_cmdline=$(cat "$WORK/l1/l2-cmdline-qemu")
				else
					l2_cmdline=$(cat "$WORK/l1/l2-cmdline")
				fi
			fi
			[ "$interactive" = 0 ] || l2_append="${l2_append:+$l2_append }vpmu.exit=shell"
			l2_full="$l2_cmdline${l2_append:+ $l2_append} vpmu.cmd=$(printf '%s' "$guest_cmd" | base64 -w0)"
			printf 'echo %s\n' "$(q "NESTED: L2 kernel command line: $l2_full")"
			if [ "$l2_vmm" = qemu ]; then
				# QEMU-KVM in L1 stands in for vpmu-vmm (build-l1.sh --with-qemu)
				line='qemu-system-aarch64'
				# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
				args=(-M virt,gic-version=3 -cpu host -accel kvm -m 512M -smp 1 -nodefaults -no-user-config
					-display none -no-reboot -serial stdio
					-kernel "$l2_kernel" -initrd /l2/initramfs.cpio.gz -append "$l2_full")
				# shellcheck disable=SC2054
				[ -z "$disk_out" ] || args+=(-drive file=/l2/disk.img,format=raw,if=none,id=d0 -device virtio-blk-device,drive=d0)
			else
				args=(run --kernel "$l2_kernel" --initrd /l2/initramfs.cpio.gz --cmdline "$l2_full")
				[ -z "$disk_out" ] || args+=(--disk /l2/disk.img)
			fi
		fi
		for a in "${args[@]}" "${vmm_args[@]}"; do line+=" $(q "$a")"; done
		printf 'echo %s\n' "$(q "NESTED: running $line")"
		printf '%s\n' "$line"
	fi
	echo 'st=$?'
	if [ -n "$disk_out" ]; then
		# Only base64 lines between the markers count: stray kernel messages are dropped.
		echo 'sync; echo "NESTED: disk-out begin"; gzip -c /l2/disk.img | base64; echo "NESTED: disk-out end"'
	fi
	# shellcheck disable=SC2016 # expands in L1
	echo 'echo "NESTED: vpmu-vmm exit $st"'
} >"$root/run.sh"
chmod 755 "$root/run.sh"

if [ -n "$vmm" ]; then
	VPMU_LOG_PREFIX=nested-rig
	# shellcheck source=../linux/lib.sh
	. "$REPO/resources/linux/lib.sh"
	if [ "$arch" = arm64 ]; then
		# a foreign binary: its libraries come from the arm64 root build-l1.sh unpacked
		stage=$(cat "$WORK/l1/stage" 2>/dev/null) || stage=
		{ [ -n "$stage" ] && [ -d "$stage" ]; } || usage_error "the arm64 root ${stage:-(unknown)} is missing: run $build_l1"
		copy_file "$vmm" "$root" /bin/vpmu-vmm
		copy_needed_libs "$stage" "$root" "$vmm"
	else
		copy_elf_with_libs "$vmm" "$root" /bin/vpmu-vmm
	fi
fi
for f in "${files[@]}"; do
	[ -f "$f" ] || usage_error "--file $f: no such file"
	cp "$f" "$root/files/"
done
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$run_dir/run.cpio"
cat "$WORK/l1/base.cpio" "$run_dir/run.cpio" >"$run_dir/initrd"

console=$run_dir/console.log
if [ "$arch" = arm64 ]; then
	# EL2 (virtualization=on) for KVM in L1, GICv3 for its vGIC; pauth-impdef=on is 4-5x
	# faster than QEMU's default pointer authentication; -icount shift=0 makes the PMUv3
	# count instructions (1 instruction = 1 ns, cycles == instructions) and is single-threaded.
	# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
	qemu=(qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu "$qemu_cpu"
		-icount shift=0 -accel tcg -m "$memory" -smp "$cpus"
		-nodefaults -no-user-config -display none -no-reboot
		-chardev stdio,id=con,signal=off -serial chardev:con
		-kernel "$l1_kernel" -initrd "$run_dir/initrd"
		-append "console=ttyAMA0 panic=-1 quiet loglevel=4")
else
	# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
	qemu=(qemu-system-x86_64 -accel tcg -cpu "$qemu_cpu" -m "$memory" -smp "$cpus"
		-machine pc -nodefaults -no-user-config -display none -no-reboot
		-chardev stdio,id=con,signal=off -serial chardev:con
		-kernel "$l1_kernel" -initrd "$run_dir/initrd"
		-append "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off")
fi
start=$(date +%s.%N)
set +e
# QEMU (under timeout, which forwards the signals it gets to it) and the console reader run
# in the background so that Ctrl-C / SIGTERM / SIGHUP stop QEMU at once: without this QEMU
# would be orphaned for up to --timeout seconds. The EXIT trap then removes $run_dir.
mkfifo "$run_dir/console.fifo"
if [ "$interactive" = 1 ]; then
	# The terminal goes to QEMU as it is (QEMU makes it raw; `timeout --foreground` keeps
	# QEMU in the terminal's process group, and the explicit <&3 overrides the /dev/null
	# that bash gives background jobs); its output reaches the terminal unchanged.
	exec 3<&0
	tee "$run_dir/console.raw" <"$run_dir/console.fifo" &
	reader_pid=$!
	timeout --foreground -k 5 "$timeout_s" "${qemu[@]}" <&3 2>"$run_dir/qemu.err" >"$run_dir/console.fifo" &
	qemu_pid=$!
else
	sed -u 's/\r*$//' <"$run_dir/console.fifo" | tee "$console" |
		{ if [ "$quiet" = 1 ]; then cat >/dev/null; else sed -u '/^NESTED: disk-out begin$/,/^NESTED: disk-out end$/{/^NESTED: /!d}'; fi; } &
	reader_pid=$!
	timeout -k 5 "$timeout_s" "${qemu[@]}" </dev/null 2>"$run_dir/qemu.err" >"$run_dir/console.fifo" &
	qemu_pid=$!
fi
on_signal() {
	trap - INT TERM HUP
	kill -TERM "$qemu_pid" 2>/dev/null
	wait "$qemu_pid" 2>/dev/null
	wait "$reader_pid" 2>/dev/null
	echo "nested-rig: interrupted: QEMU stopped, temporary files removed" >&2
	exit 130
}
trap on_signal INT TERM HUP
wait "$qemu_pid"
qemu_status=$?
wait "$reader_pid"
trap - INT TERM HUP
set -e
end=$(date +%s.%N)
[ "$interactive" = 0 ] || sed 's/\r*$//' "$run_dir/console.raw" >"$console"
[ -n "$log" ] && cp "$console" "$log"
grep -v "TCG doesn't support requested feature" "$run_dir/qemu.err" >&2 || true

elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
status=$(sed -n 's/^NESTED: vpmu-vmm exit \([0-9]\+\)$/\1/p' "$console" | tail -n1)
if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
	echo "nested-rig: error: timed out after ${timeout_s} s (QEMU killed); last lines:" >&2
	tail -n 5 "$console" >&2
	exit 102
fi
if [ -z "$status" ]; then
	echo "nested-rig: error: L1 ended (QEMU status $qemu_status) without a 'NESTED: vpmu-vmm exit' line after ${elapsed} s" >&2
	grep -q '^NESTED: L1 init reached' "$console" || echo "nested-rig: L1 never reached its /init" >&2
	grep '^NESTED: error' "$console" >&2 || true
	exit 100
fi
if [ -n "$disk_out" ]; then
	if ! sed -n '/^NESTED: disk-out begin$/,/^NESTED: disk-out end$/p' "$console" | grep -E '^[A-Za-z0-9+/=]+$' |
		base64 -d | gzip -dc >"$disk_out.tmp" 2>"$run_dir/disk.err" || [ ! -s "$disk_out.tmp" ]; then
		rm -f "$disk_out.tmp"
		echo "nested-rig: error: no disk image came back from L1: $(cat "$run_dir/disk.err")" >&2
		exit 100
	fi
	mv -f "$disk_out.tmp" "$disk_out"
	echo "nested-rig: disk image copied out of L1 to $disk_out ($(stat -c %s "$disk_out") bytes)" >&2
fi
echo "nested-rig: vpmu-vmm exit $status, whole run ${elapsed} s" >&2
exit "$status"
