# shellcheck shell=bash
# Shared helpers for resources/linux/build-image.sh and resources/nested/*.sh.
# Source it; it does not change shell options.

VPMU_LOG_PREFIX=${VPMU_LOG_PREFIX:-vpmu-image}

log() { printf '%s: %s\n' "$VPMU_LOG_PREFIX" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$VPMU_LOG_PREFIX" "$*" >&2
	exit 1
}

# ensure_pkgs PKG... : installs the Debian packages that are not installed yet.
ensure_pkgs() {
	local missing=() p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
			missing+=("$p")
		fi
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y --no-install-recommends ${missing[*]})"
	fi
	log "installing missing Debian packages: ${missing[*]}"
	local apt=(apt-get -q -o DPkg::Lock::Timeout=300)
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
		log "install failed; running apt-get update and retrying"
		"${apt[@]}" update >&2 || die "apt-get update failed (is a Debian mirror reachable?)"
		DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2 ||
			die "could not install: ${missing[*]}"
	fi
}

# copy_file SRC ROOT [DEST] : copies SRC (dereferenced) to ROOT/DEST (default: same path).
copy_file() {
	local src=$1 root=$2 dest=${3:-$1}
	mkdir -p "$root/$(dirname "$dest")"
	cp -L --preserve=mode "$src" "$root/$dest"
}

# copy_elf_with_libs SRC ROOT [DEST] : copies a dynamically linked ELF binary and every
# shared library ldd finds for it, plus the dynamic loader, into ROOT (same paths).
copy_elf_with_libs() {
	local src=$1 root=$2 dest=${3:-$1} line lib
	copy_file "$src" "$root" "$dest"
	local out
	out=$(ldd "$src" 2>&1) || {
		# a static binary: `ldd` says "not a dynamic executable"
		grep -q 'not a dynamic executable\|statically linked' <<<"$out" && return 0
		die "ldd $src failed: $out"
	}
	if grep -q 'not found' <<<"$out"; then
		die "ldd $src: missing libraries: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
	fi
	while read -r line; do
		case "$line" in
		*'=> /'*) lib=${line#*=> }; lib=${lib%% (*} ;;
		/*) lib=${line%% (*} ;;
		*) continue ;;
		esac
		[ -e "$root/$lib" ] || copy_file "$lib" "$root"
	done <<<"$out"
}

# make_cpio DIR OUT [COMPRESSOR...] : a reproducible newc archive of DIR (owner root, fixed
# mtimes), piped through COMPRESSOR (default: gzip -1 -n). Writes OUT only if it changed.
make_cpio() {
	local dir=$1 out=$2
	shift 2
	local comp=("$@")
	[ "${#comp[@]}" -eq 0 ] && comp=(gzip -1 -n)
	find "$dir" -exec touch -h -d @1 {} +
	local tmp
	tmp=$(mktemp "$out.XXXXXX")
	(cd "$dir" && find . -mindepth 1 | LC_ALL=C sort |
		cpio -o -H newc -R 0:0 --quiet --reproducible | "${comp[@]}") >"$tmp"
	if [ -f "$out" ] && cmp -s "$tmp" "$out"; then
		rm -f "$tmp"
	else
		chmod 644 "$tmp"
		mv -f "$tmp" "$out"
	fi
}

# fetch_kernel CACHE_DIR [META [boot-only]] : downloads (once) and unpacks the kernel package
# that the Debian meta package META (default linux-image-cloud-amd64) depends on (only its
# /boot with boot-only).
# Sets KERNEL_DIR (unpacked package root), KERNEL_RELEASE (uname -r), KERNEL_PKG_VERSION.
# KERNEL_PKG (env) overrides the cloud package, e.g. linux-image-6.1.0-56-cloud-amd64.
fetch_kernel() {
	local cache=$1 meta=${2:-linux-image-cloud-amd64} pkg='' ver=''
	local flavour=${meta#linux-image-}
	[ "$meta" = linux-image-cloud-amd64 ] && pkg=${KERNEL_PKG:-}
	mkdir -p "$cache/debs" "$cache/kernel"
	if [ -z "$pkg" ]; then
		pkg=$(apt-cache depends "$meta" 2>/dev/null |
			sed -n "s/^ *Depends: \(linux-image-[0-9].*-$flavour\)\$/\1/p" | head -n1) || true
		if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
			log "apt does not know $meta yet: apt-get update"
			apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || true
			pkg=$(apt-cache depends "$meta" 2>/dev/null |
				sed -n "s/^ *Depends: \(linux-image-[0-9].*-$flavour\)\$/\1/p" | head -n1) || true
		fi
	fi
	if [ -n "$pkg" ]; then
		ver=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p' | head -n1) || true
		[ "$ver" = "(none)" ] && ver=
	fi
	if [ -z "$pkg" ] || [ -z "$ver" ]; then
		# offline: reuse the newest kernel already unpacked in the cache
		local last
		last=$(find "$cache/kernel" -mindepth 1 -maxdepth 1 -type d -name "linux-image-[0-9]*-${flavour}_*" |
			{ if [ "$flavour" = amd64 ]; then grep -v -- '-cloud-amd64_'; else cat; fi; } | LC_ALL=C sort -V | tail -n1)
		[ -n "$last" ] || die "cannot resolve the kernel package (apt-cache depends $meta found nothing) and nothing is cached in $cache/kernel"
		log "apt cannot resolve the kernel package; using cached $(basename "$last")"
		pkg=$(basename "$last")
		ver=${pkg##*_}
		pkg=${pkg%_*}
	fi
	local dir="$cache/kernel/${pkg}_${ver}"
	if [ ! -f "$dir/.unpacked" ]; then
		local deb
		deb=$(find "$cache/debs" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" | head -n1)
		if [ -z "$deb" ]; then
			log "downloading $pkg $ver"
			(cd "$cache/debs" && apt-get -q download "$pkg=$ver" >&2) ||
				die "apt-get download $pkg=$ver failed (run apt-get update? is a mirror reachable?)"
			deb=$(find "$cache/debs" -maxdepth 1 -name "${pkg}_*.deb" | LC_ALL=C sort -V | tail -n1)
		fi
		[ -n "$deb" ] || die "downloaded $pkg but cannot find its .deb in $cache/debs"
		log "unpacking $(basename "$deb")"
		rm -rf "$dir" "$dir.tmp"
		if [ "${3:-}" = boot-only ]; then
			mkdir -p "$dir.tmp"
			dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir.tmp" ./boot || die "unpacking /boot of $deb failed"
		else
			dpkg-deb -x "$deb" "$dir.tmp" || die "dpkg-deb -x $deb failed"
		fi
		touch "$dir.tmp/.unpacked"
		mv "$dir.tmp" "$dir"
	fi
	local vmlinuz
	vmlinuz=$(find "$dir/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
	[ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $dir"
	# shellcheck disable=SC2034 # results for the caller
	KERNEL_DIR=$dir
	# shellcheck disable=SC2034
	KERNEL_RELEASE=${vmlinuz##*/vmlinuz-}
	# shellcheck disable=SC2034
	KERNEL_PKG_VERSION="$pkg $ver"
}
