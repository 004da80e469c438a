#!/bin/sh
# /init of the L1 guest of the arm64 nested rig (built by resources/nested-arm64/build-l1.sh).
# KVM is built into the Debian cloud-arm64 kernel and starts at boot when QEMU gives L1 EL2
# (-M virt,virtualization=on): nothing to load. Then runs /run.sh, which each run of
# resources/nested-arm64/run.sh supplies in a small cpio appended to the initrd.
# Marker lines (the x86 rig's protocol, resources/nested/l1-init.sh; parsed by run.sh):
#   NESTED: L1 init reached <release> uptime <s>
#   NESTED: kvm ready (kvm-arm <mode>)          or  NESTED: error: ...
#   NESTED: L1 PMU: <the kernel's "hw perfevents" line>   or  NESTED: L1 PMU: none ...
#   NESTED: vpmu-vmm exit <status>               (written by /run.sh)
#   NESTED: L1 done uptime <s>
[ -e /bin/mount ] || /bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
# perf in L1 sees kernel symbols and may profile anything
echo 0 >/proc/sys/kernel/kptr_restrict
echo -1 >/proc/sys/kernel/perf_event_paranoid

uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "NESTED: L1 init reached $(uname -r) uptime $(uptime_s)"

# "kvm [1]: VHE mode initialized successfully" (or "Hyp mode ..." for nVHE)
mode=$(dmesg | sed -n 's/.*kvm \[[0-9]*\]: \(.*\) initialized successfully.*/\1/p' | head -n1)
if [ -c /dev/kvm ]; then
	echo "NESTED: kvm ready (kvm-arm ${mode:-mode unknown})"
else
	echo "NESTED: error: no /dev/kvm in L1 (QEMU without -M virt,virtualization=on, or a kernel without CONFIG_KVM?)"
	dmesg | grep -i -E 'kvm|hyp|el2' | tail -n 20
fi
pmu=$(dmesg | sed -n 's/^\[[ 0-9.]*\] //; /hw perfevents/p' | head -n1)
echo "NESTED: L1 PMU: ${pmu:-none (no 'hw perfevents' line in dmesg: QEMU -cpu without PMUv3?)}"

if [ -f /run.sh ]; then
	sh /run.sh
else
	echo "NESTED: error: no /run.sh in the initrd (the per-run cpio is missing)"
fi
echo "NESTED: L1 done uptime $(uptime_s)"
sync
poweroff -f
