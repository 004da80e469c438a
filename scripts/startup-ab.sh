#!/bin/sh
# Interleaved A/B of start-up time: runs the given vpmu-vmm binaries in turn, ROUNDS
# times each per mode, on a guest that writes 0 to the debug-exit port at once, and
# prints the medians of start_to_first_entry_ns and wall_ns from --report.
# Interleaving keeps a shared, loaded host's drift out of the comparison.
#   scripts/startup-ab.sh ROUNDS BINARY...
set -eu
rounds=$1
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# ELF64, one PT_LOAD at 0x200000: mov al, 0; out 0xf4, al; jmp $
python3 - "$dir/exit0.elf" <<'PY'
import struct, sys
code = bytes([0xb0, 0x00, 0xe6, 0xf4, 0xeb, 0xfe])
addr = 0x200000
e = bytearray(0x1000)
e[0:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
struct.pack_into("<HHIQQQIHHH", e, 16, 2, 62, 1, addr, 64, 0, 0, 64, 56, 1)
struct.pack_into("<IIQQQQQQ", e, 64, 1, 7, 0x1000, addr, addr, len(code), len(code), 0x1000)
open(sys.argv[1], "wb").write(bytes(e) + code)
PY
for mode in off userspace; do
  for i in $(seq "$rounds"); do
    for bin in "$@"; do
      which=$(basename "$bin")
      "$bin" run --kernel "$dir/exit0.elf" --pmu "$mode" --memory 128M \
        --report "$dir/r.json" >/dev/null 2>&1 || true
      jq -r --arg w "$which" --arg m "$mode" \
        '[$m, $w, .start_to_first_entry_ns, .wall_ns] | @tsv' "$dir/r.json" >>"$dir/all.tsv"
    done
  done
done
python3 - "$dir/all.tsv" <<'PY'
import statistics, sys, collections
d = collections.defaultdict(lambda: ([], []))
for line in open(sys.argv[1]):
    m, w, first, wall = line.split()
    d[(m, w)][0].append(int(first)); d[(m, w)][1].append(int(wall))
print("| --pmu | binary | runs | start to first KVM_RUN, median ms | wall, median ms |")
print("|---|---|---|---|---|")
for (m, w), (first, wall) in sorted(d.items()):
    print(f"| {m} | {w} | {len(first)} | {statistics.median(first)/1e6:.2f} | {statistics.median(wall)/1e6:.2f} |")
PY
