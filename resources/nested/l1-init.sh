#!/bin/sh
# /init of the L1 guest of the nested rig (built by resources/nested/build-l1.sh).
# Loads KVM with nested virtualisation, then runs /run.sh, which each run of
# resources/nested/run.sh supplies in a small cpio appended to the initrd.
# Marker lines (parsed by run.sh and tests/linux_nested.rs, keep stable):
#   NESTED: L1 init reached <release> uptime <s>
#   NESTED: kvm ready (<module> nested=<v>)      or  NESTED: error: ...
#   NESTED: vpmu-vmm exit <status>               (written by /run.sh)
#   NESTED: L1 done uptime <s>
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run

uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "NESTED: L1 init reached $(uname -r) uptime $(uptime_s)"

if grep -qw svm /proc/cpuinfo; then
	mod=kvm_amd
	modfile=/mod/kvm-amd.ko
elif grep -qw vmx /proc/cpuinfo; then
	mod=kvm_intel
	modfile=/mod/kvm-intel.ko
else
	mod=
	echo "NESTED: error: the L1 CPU has neither svm nor vmx (QEMU -cpu model without +svm?)"
fi
if [ -n "$mod" ]; then
	insmod /mod/irqbypass.ko && insmod /mod/kvm.ko && insmod "$modfile" nested=1
	if [ -c /dev/kvm ]; then
		echo "NESTED: kvm ready ($mod nested=$(cat "/sys/module/$mod/parameters/nested"))"
	else
		echo "NESTED: error: /dev/kvm missing after loading $mod"
		dmesg | grep -i -E 'kvm|svm|vmx' | tail -n 20
	fi
fi

if [ -f /run.sh ]; then
	sh /run.sh
else
	echo "NESTED: error: no /run.sh in the initrd (the per-run cpio is missing)"
fi
echo "NESTED: L1 done uptime $(uptime_s)"
sync
poweroff -f
