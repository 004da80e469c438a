#!/usr/bin/env bash
# Builds the Linux guest image for vpmu-vmm (x86-64 by default; --arch arm64 below):
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
# With --arch arm64 (after scripts/setup-arm64.sh), the same image for aarch64 guests, in
# resources/out/linux-arm64/: Image (linux-image-cloud-arm64:arm64's kernel, uncompressed),
# initramfs.cpio.gz (busybox-static:arm64, linux-perf:arm64 with its libraries, all
# unpacked from arm64 .debs with dpkg-deb -x; vpmu-work cross-compiled with
# aarch64-linux-gnu-gcc; the same /init), config, kernel-release, vpmu-work, and
#   cmdline       for vpmu-vmm's aarch64 backend (16550 UART on MMIO, device tree):
#                 "console=ttyS0 earlycon=uart,mmio,$ARM64_UART_BASE reboot=panic_warm panic=-1 quiet";
#                 ARM64_UART_BASE (env, default 0x40002000) is where vpmu-vmm's aarch64
#                 backend puts its 16550 (arch/src/aarch64/layout.rs SERIAL_BASE)
#   cmdline-qemu  for QEMU's -M virt (PL011): "console=ttyAMA0 panic=-1 quiet"
#
# usage: resources/linux/build-image.sh [--arch amd64|arm64] [--out DIR] [--cache DIR] [--generic-kernel]
#   defaults: --arch amd64  --out resources/out/linux (arm64: resources/out/linux-arm64)
#             --cache resources/out/cache
#   env: KERNEL_PKG=linux-image-<ver>-cloud-amd64 pins the kernel package
#        (KERNEL_PKG_ARM64=linux-image-<ver>-cloud-arm64 for arm64).
# Idempotent: outputs are rewritten only when their content changes.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

OUT=
CACHE=$REPO/resources/out/cache
GENERIC=0
ARCH=amd64
while [ $# -gt 0 ]; do
	case "$1" in
	--out) OUT=$2; shift 2 ;;
	--cache) CACHE=$2; shift 2 ;;
	--generic-kernel) GENERIC=1; shift ;;
	--arch) ARCH=$2; shift 2 ;;
	-h | --help) sed -n '2,29p' "$0"; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done
case "$ARCH" in
amd64 | x86_64) ARCH=amd64 ;;
arm64 | aarch64) ARCH=arm64 ;;
*) die "--arch $ARCH: amd64 or arm64" ;;
esac
[ "$ARCH" = amd64 ] || [ "$GENERIC" = 0 ] || die "--generic-kernel is for --arch amd64 only"
if [ -z "$OUT" ]; then
	if [ "$ARCH" = amd64 ]; then OUT=$REPO/resources/out/linux; else OUT=$REPO/resources/out/linux-arm64; fi
fi
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
CACHE=$(cd "$CACHE" && pwd)

# Host tools and the guest's userland come from Debian packages: the host's own for amd64,
# arm64 .debs unpacked into STAGE for arm64.
if [ "$ARCH" = amd64 ]; then
	ensure_pkgs busybox-static cpio gzip linux-perf gcc libc6-dev
	BUSYBOX=/bin/busybox
	file_out=$(LC_ALL=C ldd "$BUSYBOX" 2>&1 || true)
	case "$file_out" in
	*'not a dynamic executable'* | *'statically linked'*) ;;
	*) die "$BUSYBOX is not statically linked (install busybox-static, not busybox)" ;;
	esac
	PERF=$(command -v perf) || die "perf not found after installing linux-perf"
	CC=gcc
	KERNEL_META=linux-image-cloud-amd64
	KERNEL_OUT=bzImage
	HOST_PKGS=(busybox-static linux-perf gcc libc6-dev)
else
	ensure_pkgs cpio gzip binutils gcc-aarch64-linux-gnu libc6-dev-arm64-cross
	STAGE=$CACHE/stage-arm64-image
	fetch_debs "$CACHE" arm64 "$STAGE" busybox-static linux-perf
	BUSYBOX=$STAGE/bin/busybox
	PERF=$STAGE/usr/bin/perf
	[ -f "$PERF" ] || die "linux-perf:arm64 has no /usr/bin/perf"
	if readelf -l "$BUSYBOX" | grep -q 'program interpreter'; then
		die "$BUSYBOX is not statically linked"
	fi
	CC=aarch64-linux-gnu-gcc
	KERNEL_META=linux-image-cloud-arm64:arm64
	KERNEL_OUT=Image
	HOST_PKGS=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
fi

# 1. The kernel.
fetch_kernel "$CACHE" "$KERNEL_META"
log "kernel $KERNEL_RELEASE ($KERNEL_PKG_VERSION)"
install_if_changed() { # SRC DEST
	if ! cmp -s "$1" "$2"; then cp -f "$1" "$2.new" && mv -f "$2.new" "$2"; fi
}
if [ "$ARCH" = arm64 ] && gzip -t "$KERNEL_DIR/boot/vmlinuz-$KERNEL_RELEASE" 2>/dev/null; then
	# an Image.gz (Debian's arm64 vmlinuz is a plain Image today): vpmu-vmm wants the Image
	gzip -dc "$KERNEL_DIR/boot/vmlinuz-$KERNEL_RELEASE" >"$OUT/Image.tmp"
	install_if_changed "$OUT/Image.tmp" "$OUT/Image" && rm -f "$OUT/Image.tmp"
else
	install_if_changed "$KERNEL_DIR/boot/vmlinuz-$KERNEL_RELEASE" "$OUT/$KERNEL_OUT"
fi
install_if_changed "$KERNEL_DIR/boot/config-$KERNEL_RELEASE" "$OUT/config"
printf '%s\n' "$KERNEL_RELEASE" >"$OUT/kernel-release.tmp" && install_if_changed "$OUT/kernel-release.tmp" "$OUT/kernel-release" && rm -f "$OUT/kernel-release.tmp"
if [ "$ARCH" = amd64 ]; then
	grep -q '^CONFIG_X86_IOPL_IOPERM=y' "$OUT/config" || log "warning: kernel lacks CONFIG_X86_IOPL_IOPERM: /init cannot end the VM with vpmu-outb"
else
	for cfg in CONFIG_KVM CONFIG_HW_PERF_EVENTS CONFIG_ARM_PMU CONFIG_SERIAL_8250_CONSOLE CONFIG_SERIAL_OF_PLATFORM CONFIG_ARM_PSCI_FW; do
		grep -q "^$cfg=y" "$OUT/config" || log "warning: the arm64 kernel lacks $cfg=y"
	done
fi
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

# The recommended kernel command lines.
if [ "$ARCH" = amd64 ]; then
	CMDLINE='console=ttyS0 reboot=t panic=-1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet'
else
	# vpmu-vmm's aarch64 backend gives the guest a 16550 UART on MMIO at 0x40002000
	# (arch/src/aarch64/layout.rs SERIAL_BASE), described in its device tree.
	# reboot=panic_warm: a panic resets with PSCI SYSTEM_RESET2 (warm), which vpmu-vmm
	# reports as a guest crash (status 8), while `reboot` stays a plain SYSTEM_RESET (0).
	ARM64_UART_BASE=${ARM64_UART_BASE:-0x40002000}
	CMDLINE="console=ttyS0 earlycon=uart,mmio,$ARM64_UART_BASE reboot=panic_warm panic=-1 quiet"
	CMDLINE_QEMU='console=ttyAMA0 panic=-1 quiet'
fi

# 2. The initramfs: skipped when nothing it is made from has changed.
stamp=$(
	{
		sha256sum "$HERE"/init.sh "$HERE"/vpmu-work.c "$HERE"/vpmu-outb.c "$HERE"/lib.sh "$HERE"/build-image.sh "$BUSYBOX" "$PERF" | cut -d' ' -f1
		dpkg-query -W "${HOST_PKGS[@]}"
		echo "$KERNEL_PKG_VERSION"
		[ "$ARCH" = amd64 ] || echo "$ARCH $CMDLINE ${STAGE_DEBS:-}"
	} | sha256sum | cut -d' ' -f1
)
if [ -f "$OUT/initramfs.cpio.gz" ] && [ -f "$OUT/cmdline" ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp" ]; then
	log "up to date: $OUT/$KERNEL_OUT, $OUT/initramfs.cpio.gz"
	exit 0
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vpmu-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,proc,sys,dev,tmp,run,root,etc,mnt}
chmod 1777 "$ROOT/tmp"

cp "$BUSYBOX" "$ROOT/bin/busybox"
if [ "$ARCH" = amd64 ]; then
	for applet in $("$BUSYBOX" --list); do
		case "$applet" in busybox | init | linuxrc) continue ;; esac
		[ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
	done
	copy_elf_with_libs "$PERF" "$ROOT" /usr/bin/perf
else
	# The host cannot run the arm64 busybox to list its applets: /init installs the
	# links itself (busybox --install -s) when /bin/mount is missing.
	ln -s busybox "$ROOT/bin/sh"
	copy_elf_closure "$STAGE" "$ROOT" usr/bin/perf
fi

log "compiling vpmu-work ($CC)"
"$CC" -O1 -g -static -fno-inline -o "$ROOT/bin/vpmu-work" "$HERE/vpmu-work.c" ||
	die "$CC failed to build vpmu-work (are ${HOST_PKGS[*]} installed?)"
install_if_changed "$ROOT/bin/vpmu-work" "$OUT/vpmu-work"
if [ "$ARCH" = amd64 ]; then
	gcc -O2 -static -s -o "$ROOT/bin/vpmu-outb" "$HERE/vpmu-outb.c" ||
		die "gcc failed to build vpmu-outb"
fi

# virtio-blk on virtio-mmio (vpmu-vmm --disk): the Debian kernels build virtio,
# virtio_ring, virtio_mmio and virtio_blk as modules. vpmu-vmm announces each disk in the
# ACPI DSDT (_HID "LNRO0005", virtio_mmio's ACPI match), so /init only loads these
# modules and the driver binds. On arm64 the transports come from the device tree
# ("virtio,mmio" nodes; QEMU's -M virt has 32, mostly empty) and /init loads the same
# modules. Only for the cloud kernel (modules are kernel-specific): the generic kernel
# boots without disks.
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

printf '%s\n' "$CMDLINE" >"$OUT/cmdline.tmp"
install_if_changed "$OUT/cmdline.tmp" "$OUT/cmdline" && rm -f "$OUT/cmdline.tmp"
if [ "$ARCH" = arm64 ]; then
	printf '%s\n' "$CMDLINE_QEMU" >"$OUT/cmdline-qemu.tmp"
	install_if_changed "$OUT/cmdline-qemu.tmp" "$OUT/cmdline-qemu" && rm -f "$OUT/cmdline-qemu.tmp"
fi

printf '%s\n' "$stamp" >"$OUT/.stamp"
log "done: $OUT/$KERNEL_OUT ($(du -h "$OUT/$KERNEL_OUT" | cut -f1)), $OUT/initramfs.cpio.gz ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1))"
