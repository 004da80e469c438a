#!/bin/sh
# /init of the vpmu-vmm Linux guest image (built by resources/linux/build-image.sh), for
# x86-64 and (build-image.sh --arch arm64) aarch64 guests.
#
# Kernel command line parameters understood here (read from /proc/cmdline):
#   vpmu.cmd=<base64>   shell command to run (base64 of the command text, `base64 -w0`);
#                       runs as `sh -c "<decoded>"`. Robust against any quoting.
#   vpmu.exit=reset     (default on x86) end with an i8042 reset whatever reboot= the kernel was
#                       given: `echo kbd > /sys/kernel/reboot/type; reboot -f`
#                       (vpmu-vmm exits 0). A kernel panic with panic=-1 still reboots the
#                       way reboot= says (reboot=t: triple fault, a non-zero vpmu-vmm exit).
#   vpmu.exit=port      write the command's exit status V (0-255) to the debug-exit port
#                       0xf4 from user space (/bin/vpmu-outb: ioperm + outb): vpmu-vmm exits
#                       (V << 1) | 1. Needs working user-mode port I/O: not in the nested rig
#                       (QEMU TCG's nested SVM raises #GP there), falls back to reset.
#   vpmu.exit=reboot    end with `reboot -f` (the kernel's reboot= decides how).
#   vpmu.exit=poweroff  end with `poweroff -f` (without ACPI this just halts the CPUs).
#                       The default on aarch64: PSCI SYSTEM_OFF, while a panic (panic=-1)
#                       is a PSCI SYSTEM_RESET, so a VMM can tell them apart. There `reset`
#                       is `reboot -f` (PSCI SYSTEM_RESET) and `port` falls back to poweroff.
#   vpmu.exit=shell     start an interactive shell on the console instead (debugging).
# Disks (vpmu-vmm --disk): vpmu-vmm announces each virtio-mmio disk in the ACPI DSDT
# (_HID "LNRO0005"); when /sys/bus/acpi/devices has such a device, /init loads the
# kernel package's virtio, virtio_ring, virtio_mmio and virtio_blk modules from
# /lib/modules/vpmu and the driver binds through ACPI: /dev/vda, /dev/vdb, ...
# (With acpi=off vpmu-vmm passes virtio_mmio.device=<size>@<base>:<irq> instead, which
# only a kernel with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y understands; the modules are
# loaded for those too.) With a device tree (aarch64), "virtio_mmio@..." nodes make /init
# load the modules; it then waits for as many vd* disks as virtio block devices appeared.
# Without vpmu.cmd=, the text after " -- " on the kernel command line (/proc/cmdline) is
# run with sh -c instead (shell quoting applies; the kernel limits the line to 2048 bytes).
#
# Marker lines (parsed by tests, keep stable):
#   VPMU-GUEST: init reached <uname -r> cpus=<n>
#   VPMU-GUEST: uptime <seconds since the guest kernel started>
#   VPMU-GUEST: disks <vda ...>      (only when disks are announced; or "error: ...")
#   VPMU-GUEST: command exit <status>
#   VPMU-GUEST: end via <mode>
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
umask 022
set -f
# The arm64 image ships only /bin/busybox and /bin/sh (the build host cannot list the
# applets of a foreign busybox): make the applet links now.
[ -e /bin/mount ] || /bin/busybox --install -s /bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp /run /root
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null

# Wait until the console has sent everything (the 8250 driver transmits from a buffer,
# interrupt-driven): otherwise the last lines are lost when the VM ends.
drain_console() {
	stty -F /dev/console -ixon 2>/dev/null # tcsetattr(TCSADRAIN) waits for the output
	sleep 0.2
}


# virtio-mmio disks announced in ACPI or on the command line (see the header).
load_disks() {
	n=0 where=''
	set +f # /init runs with globbing off
	for d in /sys/bus/acpi/devices/LNRO0005:*; do
		[ -e "$d" ] && n=$((n + 1)) where="ACPI ${d##*/}${where:+, $where}"
	done
	set -f
	if [ "$n" = 0 ]; then
		# shellcheck disable=SC2013 # words, not lines, on purpose
		for arg in $(cat /proc/cmdline); do
			case "$arg" in
			virtio_mmio.device=*) n=$((n + 1)) where="${where:+$where, }$arg" ;;
			esac
		done
	fi
	dt=0
	if [ "$n" = 0 ]; then
		set +f
		for d in /sys/firmware/devicetree/base/virtio_mmio@*; do
			[ -e "$d" ] && dt=$((dt + 1))
		done
		set -f
	fi
	[ "$n" -gt 0 ] || [ "$dt" -gt 0 ] || return 0
	for m in virtio_ring virtio virtio_mmio virtio_blk; do
		[ -f "/lib/modules/vpmu/$m.ko" ] && insmod "/lib/modules/vpmu/$m.ko"
	done
	if [ "$dt" -gt 0 ]; then
		# Device tree transports may be empty (QEMU's virt machine has 32): count the
		# virtio block devices (id 2) the transports found instead.
		set +f
		for d in /sys/bus/virtio/devices/*; do
			[ "$(cat "$d/device" 2>/dev/null)" = 0x0002 ] && n=$((n + 1))
		done
		set -f
		where="device tree ($dt virtio_mmio nodes)"
		[ "$n" -gt 0 ] || return 0
	fi
	i=0
	while :; do
		found=''
		set +f
		for d in /sys/block/vd*; do
			[ -e "$d" ] && found="$found${found:+ }${d#/sys/block/}"
		done
		set -f
		if [ "$(echo "$found" | wc -w)" -ge "$n" ] || [ $i -ge 50 ]; then break; fi
		sleep 0.1
		i=$((i + 1))
	done
	if [ -n "$found" ]; then
		echo "VPMU-GUEST: disks $found"
	else
		echo "VPMU-GUEST: error: no virtio disk appeared for $where (see dmesg)"
	fi
}

ncpus=$(grep -c '^processor' /proc/cpuinfo)
echo "VPMU-GUEST: init reached $(uname -r) cpus=$ncpus"
echo "VPMU-GUEST: uptime $(cut -d' ' -f1 /proc/uptime)"
load_disks

cmd=
arch=$(uname -m)
if [ "$arch" = aarch64 ]; then exit_mode=poweroff; else exit_mode=reset; fi
# shellcheck disable=SC2013 # words, not lines, on purpose
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vpmu.cmd=*)
		if ! cmd=$(printf '%s' "${arg#vpmu.cmd=}" | base64 -d); then
			echo "VPMU-GUEST: error: vpmu.cmd= is not valid base64"
			cmd='exit 127'
		fi
		;;
	vpmu.exit=*) exit_mode=${arg#vpmu.exit=} ;;
	esac
done

# The kernel hands init every command line word it does not know (e.g. "nomodules") as an
# argument, so "$@" is no reliable command: take the text after " -- " instead.
if [ -z "$cmd" ]; then
	cmdline=$(cat /proc/cmdline)
	case "$cmdline" in
	*' -- '*) cmd=${cmdline#* -- } ;;
	esac
fi
if [ -n "$cmd" ]; then
	sh -c "$cmd"
	status=$?
else
	echo "VPMU-GUEST: no command given (vpmu.cmd=<base64> or '-- cmd args' on the kernel command line)"
	status=0
fi
echo "VPMU-GUEST: command exit $status"

# aarch64 has no port I/O: vpmu.exit=port means the default there.
[ "$arch" != aarch64 ] || [ "$exit_mode" != port ] || exit_mode=poweroff
echo "VPMU-GUEST: end via $exit_mode"
reset_kbd() {
	if [ "$arch" = aarch64 ]; then
		reboot -f # PSCI SYSTEM_RESET
		sleep 2
	fi
	if [ -w /sys/kernel/reboot/type ] && echo kbd >/sys/kernel/reboot/type; then
		reboot -f
		sleep 2
	fi
	vpmu-outb 0x64 0xfe
}

case "$exit_mode" in
port)
	drain_console
	vpmu-outb 0xf4 "$status"
	sleep 1
	echo "VPMU-GUEST: the debug-exit port write did not end the VM; resetting"
	drain_console
	reset_kbd
	;;
reboot)
	drain_console
	reboot -f
	;;
poweroff)
	drain_console
	poweroff -f
	;;
shell)
	setsid sh -c 'exec sh </dev/console >/dev/console 2>&1'
	drain_console
	reset_kbd
	;;
*)
	drain_console
	reset_kbd
	;;
esac
# Still here: the chosen way did not end the VM.
sleep 2
echo "VPMU-GUEST: '$exit_mode' did not end the VM, trying reboot -f"
reboot -f
sleep 5
poweroff -f
