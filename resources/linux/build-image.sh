#!/usr/bin/env bash
# Builds the Linux guest image for vpmu-vmm:
#   OUT/bzImage            Debian cloud kernel (linux-image-cloud-amd64's dependency)
#   OUT/initramfs.cpio.gz  busybox + perf (with its shared libraries) + /bin/vpmu-work + /init
#                          + /lib/modules/vpmu/: the kernel package's virtio-blk-on-
#                          virtio-mmio modules (vpmu-vmm --disk; found through ACPI)
#   OUT/kernel-release     `uname -r` of the kernel;  OUT/config: its .config
#   OUT/cmdline            the recommended kernel command line for vpmu-vmm
#   OUT/bzImage-generic    with --generic-kernel: the generic Debian kernel
#                          (linux-image-amd64's dependency), which can use an MP table
# The kernel .deb is downloaded once (apt-get download) into CACHE and unpacked there.
#
# usage: resources/linux/build-image.sh [--out DIR] [--cache DIR] [--generic-kernel]
#   defaults: --out resources/out/linux  --cache resources/out/cache
#   env: KERNEL_PKG=linux-image-<ver>-cloud-amd64 pins the kernel package.
# Idempotent: outputs are rewritten only when their content changes.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

OUT=$REPO/resources/out/linux
CACHE=$REPO/resources/out/cache
GENERIC=0
while [ $# -gt 0 ]; do
	case "$1" in
	--out) OUT=$2; shift 2 ;;
	--cache) CACHE=$2; shift 2 ;;
	--generic-kernel) GENERIC=1; shift ;;
	-h | --help) sed -n '2,16p' "$0"; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
CACHE=$(cd "$CACHE" && pwd)

# Host tools and the guest's userland come from Debian packages.
ensure_pkgs busybox-static cpio gzip linux-perf gcc libc6-dev
BUSYBOX=/bin/busybox
file_out=$(LC_ALL=C ldd "$BUSYBOX" 2>&1 || true)
case "$file_out" in
*'not a dynamic executable'* | *'statically linked'*) ;;
*) die "$BUSYBOX is not statically linked (install busybox-static, not busybox)" ;;
esac
PERF=$(command -v perf) || die "perf not found after installing linux-perf"

# 1. The kernel.
fetch_kernel "$CACHE"
log "kernel $KERNEL_RELEASE ($KERNEL_PKG_VERSION)"
install_if_changed() { # SRC DEST
	if ! cmp -s "$1" "$2"; then cp -f "$1" "$2.new" && mv -f "$2.new" "$2"; fi
}
install_if_changed "$KERNEL_DIR/boot/vmlinuz-$KERNEL_RELEASE" "$OUT/bzImage"
install_if_changed "$KERNEL_DIR/boot/config-$KERNEL_RELEASE" "$OUT/config"
printf '%s\n' "$KERNEL_RELEASE" >"$OUT/kernel-release.tmp" && install_if_changed "$OUT/kernel-release.tmp" "$OUT/kernel-release" && rm -f "$OUT/kernel-release.tmp"
grep -q '^CONFIG_X86_IOPL_IOPERM=y' "$OUT/config" || log "warning: kernel lacks CONFIG_X86_IOPL_IOPERM: /init cannot end the VM with vpmu-outb"
CLOUD_PKG_VERSION=$KERNEL_PKG_VERSION
CLOUD_KERNEL_DIR=$KERNEL_DIR
CLOUD_RELEASE=$KERNEL_RELEASE

# 1b. Optionally the generic Debian kernel too: unlike the cloud kernel it has
# CONFIG_X86_MPPARSE=y, so it finds SMP CPUs through an MP table alone (the cloud kernel
# needs ACPI's MADT for that). It is XZ-compressed, hence ~2 s slower to start under TCG.
if [ "$GENERIC" = 1 ]; then
	fetch_kernel "$CACHE" linux-image-amd64 boot-only
	log "generic kernel $KERNEL_RELEASE ($KERNEL_PKG_VERSION)"
	install_if_changed "$KERNEL_DIR/boot/vmlinuz-$KERNEL_RELEASE" "$OUT/bzImage-generic"
	install_if_changed "$KERNEL_DIR/boot/config-$KERNEL_RELEASE" "$OUT/config-generic"
fi
KERNEL_PKG_VERSION=$CLOUD_PKG_VERSION

# 2. The initramfs: skipped when nothing it is made from has changed.
stamp=$(
	{
		sha256sum "$HERE"/init.sh "$HERE"/vpmu-work.c "$HERE"/vpmu-outb.c "$HERE"/lib.sh "$HERE"/build-image.sh "$BUSYBOX" "$PERF" | cut -d' ' -f1
		dpkg-query -W busybox-static linux-perf gcc libc6-dev
		echo "$KERNEL_PKG_VERSION"
	} | sha256sum | cut -d' ' -f1
)
if [ -f "$OUT/initramfs.cpio.gz" ] && [ -f "$OUT/cmdline" ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp" ]; then
	log "up to date: $OUT/bzImage, $OUT/initramfs.cpio.gz"
	exit 0
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vpmu-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,proc,sys,dev,tmp,run,root,etc,mnt}
chmod 1777 "$ROOT/tmp"

cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	case "$applet" in busybox | init | linuxrc) continue ;; esac
	[ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done

copy_elf_with_libs "$PERF" "$ROOT" /usr/bin/perf

log "compiling vpmu-work and vpmu-outb"
gcc -O1 -g -static -fno-inline -o "$ROOT/bin/vpmu-work" "$HERE/vpmu-work.c" ||
	die "gcc failed to build vpmu-work (is libc6-dev installed?)"
gcc -O2 -static -s -o "$ROOT/bin/vpmu-outb" "$HERE/vpmu-outb.c" ||
	die "gcc failed to build vpmu-outb"

# virtio-blk on virtio-mmio (vpmu-vmm --disk): the Debian kernels build virtio,
# virtio_ring, virtio_mmio and virtio_blk as modules. vpmu-vmm announces each disk in the
# ACPI DSDT (_HID "LNRO0005", virtio_mmio's ACPI match), so /init only loads these
# modules and the driver binds. Only for the cloud kernel (modules are kernel-specific):
# the generic kernel boots without disks.
MODS=$ROOT/lib/modules/vpmu
mkdir -p "$MODS"
for m in virtio_ring virtio virtio_mmio virtio_blk; do
	ko=$(find "$CLOUD_KERNEL_DIR/lib/modules/$CLOUD_RELEASE/kernel/drivers" -name "$m.ko" | head -n1)
	if [ -n "$ko" ]; then
		cp "$ko" "$MODS/"
	else
		case $m in virtio_ring | virtio) cfg=CONFIG_VIRTIO ;; virtio_mmio) cfg=CONFIG_VIRTIO_MMIO ;; *) cfg=CONFIG_VIRTIO_BLK ;; esac
		grep -q "^$cfg=y" "$OUT/config" || die "$m.ko not found in the kernel package and $cfg is not =y"
	fi
done

cp "$HERE/init.sh" "$ROOT/init"
chmod 755 "$ROOT/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
: >"$ROOT/etc/fstab"

log "packing the initramfs"
make_cpio "$ROOT" "$OUT/initramfs.cpio.gz" gzip -1 -n

cat >"$OUT/cmdline.tmp" <<'EOT'
console=ttyS0 reboot=t panic=-1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet
EOT
install_if_changed "$OUT/cmdline.tmp" "$OUT/cmdline" && rm -f "$OUT/cmdline.tmp"

printf '%s\n' "$stamp" >"$OUT/.stamp"
log "done: $OUT/bzImage ($(du -h "$OUT/bzImage" | cut -f1)), $OUT/initramfs.cpio.gz ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1))"
