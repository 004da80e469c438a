#!/usr/bin/env bash
# Builds the freestanding arm64 test guests from guest.S with the Debian cross binutils
# (aarch64-linux-gnu-as/ld/objcopy, from gcc-aarch64-linux-gnu: scripts/setup-arm64.sh):
#   OUT/exit.img      debug-exit with 42 -> vpmu-vmm status 85
#   OUT/poweroff.img  PSCI SYSTEM_OFF   -> vpmu-vmm status 0
#   OUT/fuzz.img      10000 random MMIO loads/stores around the devices, then debug-exit 42 -> 85
#   OUT/spin.img      prints its two lines, then spins silently forever (the watchdog test)
#   OUT/pmu.img       the PMU conformance guest (pmu.S; --cpus 1), debug-exit 42 -> 85
# Both are raw arm64 Images (64-byte Image header), booted with `vpmu-vmm run --kernel`.
# usage: resources/guests-arm64/build.sh [OUT]   (default resources/out/guests-arm64)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/../out/guests-arm64}
mkdir -p "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in aarch64-linux-gnu-as aarch64-linux-gnu-ld aarch64-linux-gnu-objcopy; do
	command -v "$t" >/dev/null || { echo "guests-arm64: error: $t missing: run scripts/setup-arm64.sh" >&2; exit 2; }
done
build() { # NAME ASFLAGS...   (SRC=file.S, default guest.S)
	local name=$1
	shift
	aarch64-linux-gnu-as "$@" -o "$tmp/$name.o" "$HERE/${SRC:-guest.S}"
	aarch64-linux-gnu-ld -nostdlib -static -Ttext=0x80000000 -e _start -o "$tmp/$name.elf" "$tmp/$name.o"
	aarch64-linux-gnu-objcopy -O binary "$tmp/$name.elf" "$tmp/$name.img"
	if ! cmp -s "$tmp/$name.img" "$OUT/$name.img"; then cp "$tmp/$name.img" "$OUT/$name.img"; fi
}
build exit --defsym POWEROFF=0 --defsym EXIT_CODE=42 --defsym FUZZ=0 --defsym SPIN=0
build poweroff --defsym POWEROFF=1 --defsym EXIT_CODE=0 --defsym FUZZ=0 --defsym SPIN=0
build fuzz --defsym POWEROFF=0 --defsym EXIT_CODE=42 --defsym FUZZ=10000 --defsym SPIN=0
build spin --defsym POWEROFF=0 --defsym EXIT_CODE=42 --defsym FUZZ=0 --defsym SPIN=1
SRC=pmu.S build pmu
echo "guests-arm64: $OUT/exit.img $OUT/poweroff.img $OUT/fuzz.img $OUT/spin.img $OUT/pmu.img"
