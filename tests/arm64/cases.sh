#!/bin/sh
# Runs in the arm64 rig's L1 (resources/nested-arm64/run.sh --l1-cmd 'sh /files/cases.sh'
# --file tests/arm64/cases.sh --file <guest images>): each case runs vpmu-vmm once and is
# framed by "ARM64-CASE <name> begin" / "ARM64-CASE <name> status <n>" (parsed by
# tests/linux_arm64.rs). One L1 boot serves every case. Guest images: exit.img,
# poweroff.img, fuzz.img, pmu.img (resources/guests-arm64/build.sh).
C=$(cat /l2/cmdline)
b64() { printf '%s' "$1" | base64 -w0; }
case_() { # NAME VPMU-VMM-ARGS...
	name=$1
	shift
	echo "ARM64-CASE $name begin"
	t0=$(cut -d' ' -f1 /proc/uptime)
	# a hung VM costs 120 s of this case, not the whole run (status 137 then)
	timeout -s KILL 120 /bin/vpmu-vmm "$@"
	st=$?
	echo "ARM64-CASE $name status $st time $t0 $(cut -d' ' -f1 /proc/uptime)"
}
linux() { # NAME CPUS GUEST-CMD EXTRA-CMDLINE [VPMU-VMM-ARGS...]
	n=$1 cpus=$2 cmd=$3 extra=$4
	shift 4
	case_ "$n" run --kernel /l2/Image --initrd /l2/initramfs.cpio.gz --cpus "$cpus" --memory 512M \
		--cmdline "$C $extra vpmu.cmd=$(b64 "$cmd")" "$@"
}
# shellcheck disable=SC2016 # expands in L2
linux boot1 1 'echo L2-CPUS-ONLINE $(cat /sys/devices/system/cpu/online)' ''
# shellcheck disable=SC2016
linux boot2 2 'echo L2-CPUS-ONLINE $(cat /sys/devices/system/cpu/online)' ''
linux reboot 1 'echo about to reboot' 'vpmu.exit=reboot'
linux panic 1 'echo c > /proc/sysrq-trigger' ''
# virtio-blk on virtio-mmio (device tree node, SPI through an irqfd): write, read back in
# L2, then read in L1 what L2 wrote.
truncate -s 8M /tmp/disk.img
# shellcheck disable=SC2016 # expands in L2
linux disk 1 'echo vpmu-arm64-disk-ok | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null && sync &&
echo L2-READ $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1)' '' --disk /tmp/disk.img
echo "L1-DISK $(head -c 19 /tmp/disk.img)"
case_ exit-guest run --kernel /files/exit.img --memory 64M
case_ exit-guest-2cpus run --kernel /files/exit.img --memory 64M --cpus 2
case_ poweroff-guest run --kernel /files/poweroff.img --memory 64M
case_ fuzz-guest run --kernel /files/fuzz.img --memory 64M --stats
# The silence watchdog: a guest that spins after two lines; SIGTERM after 8 s (L1 time).
echo "ARM64-CASE watchdog-spin begin"
/bin/vpmu-vmm run --kernel /files/spin.img --memory 64M --watchdog 2 &
spin_pid=$!
sleep 8
kill -TERM "$spin_pid"
wait "$spin_pid"
echo "ARM64-CASE watchdog-spin status $? time 0 0"
head -c 100000 /l2/Image >/tmp/truncated.img
head -c 4096 /dev/urandom >/tmp/garbage.img
case_ bad-missing run --kernel /nonexistent/Image --memory 64M
case_ bad-garbage run --kernel /tmp/garbage.img --memory 64M
case_ bad-truncated run --kernel /tmp/truncated.img --memory 64M
case_ bad-toolarge run --kernel /l2/Image --memory 16M
case_ bad-memory run --kernel /files/exit.img --memory 5T
case_ bad-cpus run --kernel /files/exit.img --cpus 0
case_ bad-pmu run --kernel /files/exit.img --pmu passthrough
case_ bad-pmu-userspace run --kernel /files/exit.img --pmu userspace
printf 'action = "allow"\n[[event]]\nname = "bogus"\n' >/tmp/bad-policy.toml
case_ bad-policy run --kernel /files/exit.img --pmu emulated --pmu-policy /tmp/bad-policy.toml
case_ probe probe
# ---- the arm64 vPMU (KVM PMUv3 under QEMU's emulated PMUv3: only 0x11 and 0x08 count)
printf 'action = "deny"\ncycle_counter = "allow"\n[[event]]\nname = "instructions"\n' >/tmp/deny-inst.toml
printf 'action = "allow"\ncycle_counter = "deny"\n[[event]]\nname = "instructions"\n' >/tmp/deny-cycles.toml
case_ pmu-guest-off run --kernel /files/pmu.img --memory 64M --pmu off --stats
case_ pmu-guest run --kernel /files/pmu.img --memory 64M --pmu emulated --stats
case_ pmu-guest-deny-inst run --kernel /files/pmu.img --memory 64M --pmu emulated \
	--pmu-policy /tmp/deny-inst.toml --pmu-audit /tmp/audit.jsonl --stats
echo "L1-AUDIT $(grep -c '"sampled":true' /tmp/audit.jsonl) $(grep -c '"verdict":"denied"' /tmp/audit.jsonl)"
case_ pmu-guest-deny-cycles run --kernel /files/pmu.img --memory 64M --pmu emulated \
	--pmu-policy /tmp/deny-cycles.toml --stats
# shellcheck disable=SC2016 # expands in L2
linux perf 1 'echo L2-PMUS $(ls /sys/bus/event_source/devices); perf stat -e cycles,instructions /bin/vpmu-work 0.2 2>&1; cd /tmp;
perf record -e cycles -c 1000000 -o /tmp/p.data /bin/vpmu-work 0.3 2>&1;
perf report -i /tmp/p.data --stdio --sort sym 2>/dev/null | grep -m5 "%"' '' --pmu emulated
linux perf-deny-inst 1 'perf stat -e cycles,instructions /bin/vpmu-work 0.2 2>&1' '' \
	--pmu emulated --pmu-policy /tmp/deny-inst.toml
# shellcheck disable=SC2016 # expands in L2
linux perf-off 1 'echo L2-PMUS $(ls /sys/bus/event_source/devices); perf stat -e cycles true 2>&1' ''

# ---- perf.data out of L2 (issues 11/12): L2 records and writes a tar archive straight onto
# its virtio-blk disk /l2/disk.img, which run.sh --disk-out (given by tests/linux_arm64.rs)
# sends back to the host as gzip+base64 after this script; the host untars it and runs its
# own perf report. perf-out-clock: the software event cpu-clock with no vPMU (--pmu off,
# the default); perf-out-cycles: the hardware event cycles under --pmu emulated (overflow
# interrupts), in a second VM that reads the first VM's archive back from the same disk and
# writes it again with its own perf.data added. --stats gives "start to first guest entry".
if [ -f /l2/disk.img ]; then
	# shellcheck disable=SC2016 # expands in L2
	linux perf-out-clock 1 'cd /tmp && perf record -e cpu-clock -F 1000 -o clock.data /bin/vpmu-work 0.5 2>&1 &&
mkdir -p bin && cp /bin/vpmu-work bin/ && cat /proc/kallsyms >clock.kallsyms &&
tar cf /dev/vda clock.data clock.kallsyms bin && sync && echo L2-TAR-DONE clock' '' --stats --disk /l2/disk.img
	# shellcheck disable=SC2016 # expands in L2
	linux perf-out-cycles 1 'mkdir -p /tmp/o && cd /tmp/o && tar xf /dev/vda && echo L2-TAR-READ $(ls | tr "\n" " ") &&
perf record -e cycles -c 1000000 -o cycles.data /bin/vpmu-work 0.3 2>&1 &&
cat /proc/kallsyms >cycles.kallsyms && tar cf /dev/vda clock.data clock.kallsyms cycles.data cycles.kallsyms bin && sync && echo L2-TAR-DONE cycles' '' \
		--pmu emulated --stats --disk /l2/disk.img
else
	echo "ARM64-NOTE: no /l2/disk.img (run.sh without --disk-out): perf-out cases not run"
fi
