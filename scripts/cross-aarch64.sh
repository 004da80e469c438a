#!/usr/bin/env bash
# Cross-builds a cargo package/binary of this workspace for aarch64-unknown-linux-gnu with
# Debian's Rust toolchain (/usr/bin/rustc, /usr/bin/cargo and libstd-rust-web-dev:arm64,
# installed by scripts/setup-arm64.sh) and the aarch64-linux-gnu-gcc linker. rustup's
# toolchain (first in PATH, x86 only) is not used and not changed.
#
# usage: scripts/cross-aarch64.sh [--debug] [CARGO-BUILD-ARGS...]
#   default args: -p vpmu-vmm --bin vpmu-vmm   (release build)
#   e.g.  scripts/cross-aarch64.sh -p vpmu            # one crate
#         scripts/cross-aarch64.sh --workspace        # everything
#         scripts/cross-aarch64.sh -p vpmu-vmm --bin vpmu-vmm --message-format short
# Output: $CARGO_TARGET_DIR (default target-aarch64/)/aarch64-unknown-linux-gnu/release/<bin>
# (target-aarch64/ is a separate target dir: Debian's rustc and rustup's rustc must not
# share build artefacts). Exit status: cargo's; 2 = usage error / toolchain missing.
#
# Cargo.lock is lock-file "version = 4" (written by rustup's cargo >= 1.78). Debian
# bookworm-security's cargo-web is 1.9x and reads it as is. An older cargo (< 1.78, e.g.
# bookworm's plain `cargo` 0.66 = Rust 1.65) cannot ("lock file version 4 requires
# `-Znext-lockfile-bump`"); it would also be too old for the workspace's rust-version and
# its dependencies, so this script refuses it rather than rewriting the lock file.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=aarch64-unknown-linux-gnu
RUSTC_BIN=${DEBIAN_RUSTC:-/usr/bin/rustc}
CARGO_BIN=${DEBIAN_CARGO:-/usr/bin/cargo}
LINKER=${AARCH64_LINKER:-aarch64-linux-gnu-gcc}

err() {
	echo "cross-aarch64: error: $*" >&2
	exit 2
}

profile=(--release)
if [ "${1:-}" = --debug ]; then
	profile=()
	shift
fi
case "${1:-}" in -h | --help) sed -n '2,20p' "$0"; exit 0 ;; esac
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(-p vpmu-vmm --bin vpmu-vmm)

{ [ -x "$RUSTC_BIN" ] && [ -x "$CARGO_BIN" ]; } ||
	err "Debian's $RUSTC_BIN / $CARGO_BIN missing: run scripts/setup-arm64.sh (rustc-web, cargo-web)"
command -v "$LINKER" >/dev/null || err "$LINKER missing: run scripts/setup-arm64.sh (gcc-aarch64-linux-gnu)"
sysroot=$("$RUSTC_BIN" --print sysroot)
compgen -G "$sysroot/lib/rustlib/$TARGET/lib/libstd-*.rlib" >/dev/null ||
	err "no $TARGET standard library in $sysroot: run scripts/setup-arm64.sh (libstd-rust-web-dev:arm64)"

# Lock-file version 4 needs cargo >= 1.78.
cv=$("$CARGO_BIN" --version | sed -n 's/^cargo \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
read -r major minor <<<"$cv"
if [ -z "$major" ] || [ "$major" -lt 1 ] || { [ "$major" = 1 ] && [ "$minor" -lt 78 ]; }; then
	err "$("$CARGO_BIN" --version) cannot read Cargo.lock version 4 (needs >= 1.78): install cargo-web from bookworm-security"
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-aarch64}
export RUSTC=$RUSTC_BIN
# C code built by build scripts (cc crate), if any, must be aarch64 too.
export CC_aarch64_unknown_linux_gnu=${CC_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-gcc}
export AR_aarch64_unknown_linux_gnu=${AR_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-ar}
# Keep the 2-core machines usable unless the caller says otherwise.
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
unset RUSTC_WRAPPER RUSTFLAGS

cd "$REPO"
echo "cross-aarch64: $("$RUSTC_BIN" --version), target dir $CARGO_TARGET_DIR" >&2
exec "$CARGO_BIN" build "${profile[@]}" --target "$TARGET" \
	--config "target.$TARGET.linker=\"$LINKER\"" "${args[@]}"
