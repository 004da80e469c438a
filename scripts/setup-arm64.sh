#!/usr/bin/env bash
# Installs what the arm64 side of the project needs on a Debian 12 (amd64) machine:
#   - the arm64 foreign architecture (dpkg --add-architecture arm64), so that arm64 .debs
#     (kernel, busybox, perf, QEMU for L1) can be fetched with `apt-get download`;
#   - qemu-system-arm (qemu-system-aarch64 for the arm64 nested rig), cpio, kmod;
#   - the aarch64 C cross toolchain (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross);
#   - Debian's Rust toolchain with the aarch64 standard library (rustc-web, cargo-web,
#     libstd-rust-web-dev:arm64) for scripts/cross-aarch64.sh. It installs /usr/bin/rustc
#     and /usr/bin/cargo; rustup's toolchain stays first in PATH and untouched (x86 only);
#   - shellcheck (to lint the scripts).
# Prints the versions at the end. Idempotent: apt-get update and install only run when
# something is missing. Run as root (or with sudo available).
#
# usage: scripts/setup-arm64.sh [--check]     --check: only report what is missing (exit 1 if any)
set -euo pipefail

PKGS=(qemu-system-arm cpio gzip binutils
	gcc-aarch64-linux-gnu libc6-dev-arm64-cross
	rustc-web cargo-web libstd-rust-web-dev:arm64
	shellcheck)

check=0
case "${1:-}" in
--check) check=1 ;;
'') ;;
-h | --help) sed -n '2,14p' "$0"; exit 0 ;;
*) echo "setup-arm64: error: unknown argument: $1" >&2; exit 2 ;;
esac

installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
have_arch=0
dpkg --print-foreign-architectures | grep -qx arm64 && have_arch=1

if [ "$check" = 1 ]; then
	[ "$have_arch" = 1 ] || echo "setup-arm64: missing: dpkg foreign architecture arm64"
	[ "${#missing[@]}" -eq 0 ] || echo "setup-arm64: missing packages: ${missing[*]}"
	[ "$have_arch" = 1 ] && [ "${#missing[@]}" -eq 0 ]
	exit
fi

if [ "$have_arch" = 0 ] || [ "${#missing[@]}" -gt 0 ]; then
	SUDO=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || {
			echo "setup-arm64: error: run as root (missing: ${missing[*]})" >&2
			exit 1
		}
		SUDO=(sudo)
	fi
	apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
	if [ "$have_arch" = 0 ]; then
		echo "setup-arm64: dpkg --add-architecture arm64" >&2
		"${SUDO[@]}" dpkg --add-architecture arm64
	fi
	echo "setup-arm64: apt-get update" >&2
	"${apt[@]}" update >&2
	if [ "${#missing[@]}" -gt 0 ]; then
		echo "setup-arm64: installing ${missing[*]}" >&2
		"${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2
	fi
fi

echo "setup-arm64: Debian rustc: $(/usr/bin/rustc --version)"
echo "setup-arm64: Debian cargo: $(/usr/bin/cargo --version)"
echo "setup-arm64: $(qemu-system-aarch64 --version | head -n1)"
echo "setup-arm64: $(aarch64-linux-gnu-gcc --version | head -n1)"
