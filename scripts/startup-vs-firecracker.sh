#!/bin/sh
# Side-by-side start-up of vpmu-vmm and a Firecracker binary on the same host and guest:
#   scripts/startup-vs-firecracker.sh ROUNDS VPMU_VMM FIRECRACKER
# The guest is the same 6-byte ELF64 for both (one PT_LOAD at 0x200000: mov al, 0xfe;
# out 0x64, al; jmp $ -- an i8042 reset, which ends both VMMs with status 0), 1 vCPU,
# 128 MiB; vpmu-vmm runs `run --pmu off` (its default), Firecracker `--no-api
# --config-file`. Runs alternate (A, B, A, B, ...) so that a shared host's drift hits both.
# Times, from one clock (CLOCK_MONOTONIC):
#   first KVM_RUN: from just before the launcher's fork/exec to the process's first
#                  ioctl(KVM_RUN), which a small LD_PRELOAD library (built here with cc)
#                  stamps into a shared page -- no system call, so seccomp filters that
#                  forbid new calls do not interfere;
#   whole process: from the same start to the launcher's wait() returning.
# Needs cc, python3 and a dynamically linked Firecracker (LD_PRELOAD; a static musl
# build ignores it). This script builds neither VMM: bring the binaries.
set -eu
[ $# -eq 3 ] || { echo "usage: $0 ROUNDS VPMU_VMM FIRECRACKER" >&2; exit 2; }
rounds=$1 vpmu=$2 fc=$3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/stamp.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static volatile uint64_t *slot;
static int (*real_ioctl)(int, unsigned long, ...);
__attribute__((constructor)) static void init(void) {
	real_ioctl = dlsym(RTLD_NEXT, "ioctl");
	const char *p = getenv("FIRST_KVM_RUN_FILE");
	int fd = p ? open(p, O_RDWR | O_CLOEXEC) : -1;
	if (fd < 0) return;
	void *m = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (m != MAP_FAILED) slot = m;
}
int ioctl(int fd, unsigned long req, ...) {
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (req == 0xAE80 && slot && slot[0] == 0) { /* KVM_RUN */
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		slot[0] = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	}
	return real_ioctl(fd, req, arg);
}
C
cc -O2 -shared -fPIC -o "$dir/stamp.so" "$dir/stamp.c" -ldl
python3 - "$dir" "$rounds" "$vpmu" "$fc" <<'PY'
import json, os, statistics, struct, subprocess, sys, time
d, rounds, vpmu, fc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
code = bytes([0xB0, 0xFE, 0xE6, 0x64, 0xEB, 0xFE])
addr = 0x200000
e = bytearray(0x1000)
e[0:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
struct.pack_into("<HHIQQQIHHH", e, 16, 2, 62, 1, addr, 64, 0, 0, 64, 56, 1)
struct.pack_into("<IIQQQQQQ", e, 64, 1, 7, 0x1000, addr, addr, len(code), len(code), 0x1000)
guest = os.path.join(d, "reset.elf")
open(guest, "wb").write(bytes(e) + code)
cfg = os.path.join(d, "fc.json")
json.dump({"boot-source": {"kernel_image_path": guest, "boot_args": "console=ttyS0"},
           "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}, open(cfg, "w"))
cmds = {"vpmu-vmm": [vpmu, "run", "--kernel", guest, "--memory", "128M", "--pmu", "off"],
        "firecracker": [fc, "--no-api", "--config-file", cfg]}
slot = os.path.join(d, "slot")
env = dict(os.environ, LD_PRELOAD=os.path.join(d, "stamp.so"), FIRST_KVM_RUN_FILE=slot)
res = {k: ([], []) for k in cmds}
failed = {k: 0 for k in cmds}
for _ in range(rounds):
    for name, cmd in cmds.items():
        open(slot, "wb").write(bytes(4096))
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        first = struct.unpack("<Q", open(slot, "rb").read(8))[0]
        if p.returncode != 0 or first == 0:
            failed[name] += 1
            continue
        res[name][0].append(first - t0)
        res[name][1].append(t1 - t0)
ms = lambda v: f"{v / 1e6:.2f}"
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]
print("| VMM | runs ok | failed | first KVM_RUN median ms (p10-p90) | whole process median ms (p10-p90) |")
print("|---|---|---|---|---|")
for name, (first, whole) in res.items():
    if not first:
        print(f"| {name} | 0 | {failed[name]} | - | - |")
        continue
    print(f"| {name} | {len(first)} | {failed[name]} | {ms(statistics.median(first))} ({ms(pct(first, .1))}-{ms(pct(first, .9))}) "
          f"| {ms(statistics.median(whole))} ({ms(pct(whole, .1))}-{ms(pct(whole, .9))}) |")
a, b = res["vpmu-vmm"], res["firecracker"]
if a[0] and b[0]:
    print(f"\nratio vpmu-vmm / firecracker: first KVM_RUN {statistics.median(a[0]) / statistics.median(b[0]):.2f}, "
          f"whole process {statistics.median(a[1]) / statistics.median(b[1]):.2f}")
PY
