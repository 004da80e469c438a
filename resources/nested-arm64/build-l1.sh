#!/usr/bin/env bash
# Builds the L1 part of the arm64 nested rig (QEMU TCG aarch64 with EL2 and PMUv3 -> L1 arm64
# Linux, KVM built in -> vpmu-vmm (aarch64) -> L2 arm64 Linux):
#   WORK/l1/Image       the L1 kernel: the same Debian cloud-arm64 kernel as the L2 guest
#                       (CONFIG_KVM=y, CONFIG_ARM_PMU=y: no modules to load)
#   WORK/l1/base.cpio   L1 initramfs (uncompressed; its big members are compressed already):
#                       static busybox, perf with its shared libraries (linux-perf:arm64),
#                       /bin/vpmu-work, /init (l1-init.sh), and the L2 guest image of
#                       resources/linux/build-image.sh --arch arm64 under /l2/ (Image,
#                       initramfs.cpio.gz, cmdline, cmdline-qemu, kernel-release);
#                       with --with-qemu also /usr/bin/qemu-system-aarch64 (qemu-system-arm:arm64)
#                       with its libraries, to check the rig with QEMU-KVM as L2's VMM
#                       (run.sh --l2-vmm qemu) while vpmu-vmm has no aarch64 backend
#   WORK/l1/l2-cmdline, l2-cmdline-qemu   L2 command lines (vpmu-vmm's / QEMU virt's)
#   WORK/l1/stage       path of the unpacked arm64 root in which run.sh finds the shared
#                       libraries of the vpmu-vmm binary it puts into L1
# vpmu-vmm itself is NOT in here: run.sh puts it (with its shared libraries) into a small
# per-run cpio appended to the initrd, like the x86 rig (resources/nested/).
#
# usage: resources/nested-arm64/build-l1.sh [--work DIR] [--with-qemu]
#   default --work resources/nested-arm64/work (or $VPMU_NESTED_ARM64_WORK)
# Needs scripts/setup-arm64.sh (arm64 dpkg architecture, cross tools). Idempotent: runs
# build-image.sh --arch arm64 (cached) and rewrites base.cpio only when it changes.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VPMU_LOG_PREFIX=vpmu-nested-arm64
# shellcheck source=../linux/lib.sh
. "$REPO/resources/linux/lib.sh"

WORK=${VPMU_NESTED_ARM64_WORK:-$HERE/work}
WITH_QEMU=0
while [ $# -gt 0 ]; do
	case "$1" in
	--work) WORK=$2; shift 2 ;;
	--with-qemu) WITH_QEMU=1; shift ;;
	-h | --help) sed -n '2,23p' "$0"; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done
mkdir -p "$WORK/l1"
WORK=$(cd "$WORK" && pwd)
IMG=$REPO/resources/out/linux-arm64
CACHE=$REPO/resources/out/cache

ensure_pkgs qemu-system-arm cpio binutils
"$REPO/resources/linux/build-image.sh" --arch arm64 --out "$IMG" --cache "$CACHE"
fetch_kernel "$CACHE" linux-image-cloud-arm64:arm64
grep -q '^CONFIG_KVM=y' "$KERNEL_DIR/boot/config-$KERNEL_RELEASE" ||
	die "$KERNEL_RELEASE is not built with CONFIG_KVM=y (build-l1.sh loads no KVM modules)"

pkgs=(busybox-static linux-perf)
stage=$CACHE/stage-arm64-l1
if [ "$WITH_QEMU" = 1 ]; then
	pkgs+=(qemu-system-arm)
	stage=$CACHE/stage-arm64-l1-qemu
fi
fetch_debs "$CACHE" arm64 "$stage" "${pkgs[@]}"

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/vpmu-l1-arm64.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,l2,files,root,etc}
cp "$stage/bin/busybox" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh" # /init installs the other applet links (busybox --install -s)
copy_elf_closure "$stage" "$ROOT" usr/bin/perf
if [ "$WITH_QEMU" = 1 ]; then
	copy_elf_closure "$stage" "$ROOT" usr/bin/qemu-system-aarch64
fi
cp "$IMG/vpmu-work" "$ROOT/bin/vpmu-work"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"

cp "$HERE/l1-init.sh" "$ROOT/init"
chmod 755 "$ROOT/init"
cp "$IMG/Image" "$IMG/initramfs.cpio.gz" "$IMG/cmdline" "$IMG/cmdline-qemu" "$IMG/kernel-release" "$ROOT/l2/"

install_if_changed() { # SRC DEST
	if ! cmp -s "$1" "$2"; then cp -f "$1" "$2.new" && mv -f "$2.new" "$2"; fi
}
make_cpio "$ROOT" "$WORK/l1/base.cpio" cat
install_if_changed "$KERNEL_DIR/boot/vmlinuz-$KERNEL_RELEASE" "$WORK/l1/Image"
install_if_changed "$IMG/cmdline" "$WORK/l1/l2-cmdline"
install_if_changed "$IMG/cmdline-qemu" "$WORK/l1/l2-cmdline-qemu"
printf '%s\n' "$stage" >"$WORK/l1/stage"
log "done: $WORK/l1/Image, $WORK/l1/base.cpio ($(du -h "$WORK/l1/base.cpio" | cut -f1)$([ "$WITH_QEMU" = 0 ] || echo ', with qemu-system-aarch64'))"
