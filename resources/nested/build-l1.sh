#!/usr/bin/env bash
# Builds the L1 part of the nested rig (QEMU TCG -> L1 Linux with nested KVM -> vpmu-vmm -> L2):
#   WORK/l1/vmlinuz     the L1 kernel (the same Debian cloud kernel as the L2 guest)
#   WORK/l1/base.cpio   L1 initramfs (uncompressed; its big members are already compressed):
#                       static busybox, irqbypass/kvm/kvm-amd/kvm-intel .ko from the same
#                       kernel package, /init (l1-init.sh), and the L2 guest image under /l2/
#                       (bzImage, bzImage-generic, initramfs.cpio.gz, cmdline) from
#                       resources/linux/build-image.sh --generic-kernel.
# vpmu-vmm itself is NOT in here: run.sh puts it (with its shared libraries) into a small
# per-run cpio appended to the initrd, so rebuilding vpmu-vmm never requires this script.
#
# usage: resources/nested/build-l1.sh [--work DIR]     (default resources/nested/work)
# Idempotent: runs build-image.sh (cached) and rewrites base.cpio only when it changes.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VPMU_LOG_PREFIX=vpmu-nested
# shellcheck source=../linux/lib.sh
. "$REPO/resources/linux/lib.sh"

WORK=$HERE/work
while [ $# -gt 0 ]; do
	case "$1" in
	--work) WORK=$2; shift 2 ;;
	-h | --help) sed -n '2,13p' "$0"; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done
mkdir -p "$WORK/l1"
WORK=$(cd "$WORK" && pwd)
IMG=$REPO/resources/out/linux
CACHE=$REPO/resources/out/cache

ensure_pkgs qemu-system-x86 busybox-static cpio kmod
"$REPO/resources/linux/build-image.sh" --out "$IMG" --cache "$CACHE" --generic-kernel
fetch_kernel "$CACHE"
MODDIR=$KERNEL_DIR/lib/modules/$KERNEL_RELEASE/kernel

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/vpmu-l1.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,mod,l2,files,root,etc}
cp /bin/busybox "$ROOT/bin/busybox"
for applet in $(/bin/busybox --list); do
	case "$applet" in busybox | init | linuxrc) continue ;; esac
	ln -s busybox "$ROOT/bin/$applet"
done

# KVM modules; l1-init.sh loads them in this order: irqbypass, kvm, kvm-amd|kvm-intel.
declare -A have=()
for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko arch/x86/kvm/kvm-intel.ko; do
	[ -f "$MODDIR/$m" ] || die "kernel package lacks $m (looked in $MODDIR)"
	cp "$MODDIR/$m" "$ROOT/mod/"
	name=$(basename "$m" .ko)
	have[${name//-/_}]=1
done
for ko in "$ROOT"/mod/*.ko; do
	deps=$(modinfo -F depends "$ko")
	for d in ${deps//,/ }; do
		[ -n "${have[${d//-/_}]:-}" ] ||
			die "$(basename "$ko") depends on module '$d', which the L1 image does not carry (update build-l1.sh and l1-init.sh)"
	done
done

cp "$HERE/l1-init.sh" "$ROOT/init"
chmod 755 "$ROOT/init"
cp "$IMG/bzImage" "$IMG/bzImage-generic" "$IMG/initramfs.cpio.gz" "$IMG/cmdline" "$IMG/kernel-release" "$ROOT/l2/"

install_if_changed() { # SRC DEST
	if ! cmp -s "$1" "$2"; then cp -f "$1" "$2.new" && mv -f "$2.new" "$2"; fi
}
make_cpio "$ROOT" "$WORK/l1/base.cpio" cat
install_if_changed "$KERNEL_DIR/boot/vmlinuz-$KERNEL_RELEASE" "$WORK/l1/vmlinuz"
install_if_changed "$IMG/cmdline" "$WORK/l1/l2-cmdline"
log "done: $WORK/l1/vmlinuz, $WORK/l1/base.cpio ($(du -h "$WORK/l1/base.cpio" | cut -f1))"
