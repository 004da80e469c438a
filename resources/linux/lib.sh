# shellcheck shell=bash
# Shared helpers for resources/linux/build-image.sh, resources/nested/*.sh and
# resources/nested-arm64/*.sh.
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

# apt_memo CACHE CMD... : prints the output of CMD (an apt-cache / apt-get query), reusing
# the output of the same query made earlier while apt's package lists have not changed
# (apt-cache takes ~1.5 s a call once the arm64 lists are there too). Empty output and
# failures are not remembered.
apt_memo() {
	local cache=$1 key f out
	shift
	key=$({
		printf '%s\n' "$@"
		stat -c %Y /var/lib/apt/lists /var/cache/apt/pkgcache.bin 2>/dev/null || true
	} | sha256sum | cut -c1-32)
	f=$cache/apt-memo/$key
	if [ -s "$f" ]; then
		cat "$f"
		return 0
	fi
	out=$("$@") || return
	if [ -n "$out" ]; then
		mkdir -p "$cache/apt-memo"
		printf '%s\n' "$out" >"$f.tmp" && mv -f "$f.tmp" "$f"
	fi
	printf '%s\n' "$out"
}

# fetch_kernel CACHE_DIR [META [boot-only]] : downloads (once) and unpacks the kernel package
# that the Debian meta package META (default linux-image-cloud-amd64) depends on (only its
# /boot with boot-only). META may name a foreign architecture, e.g.
# linux-image-cloud-arm64:arm64 (needs `dpkg --add-architecture arm64`, scripts/setup-arm64.sh).
# Sets KERNEL_DIR (unpacked package root), KERNEL_RELEASE (uname -r), KERNEL_PKG_VERSION.
# KERNEL_PKG (env) overrides the cloud package, e.g. linux-image-6.1.0-56-cloud-amd64;
# KERNEL_PKG_ARM64 the arm64 one, e.g. linux-image-6.1.0-57-cloud-arm64.
fetch_kernel() {
	local cache=$1 meta=${2:-linux-image-cloud-amd64} pkg='' ver='' qual=''
	case "$meta" in *:*) qual=:${meta#*:} ;; esac
	local flavour=${meta#linux-image-}
	flavour=${flavour%%:*}
	case "$meta" in
	linux-image-cloud-amd64) pkg=${KERNEL_PKG:-} ;;
	linux-image-cloud-arm64:arm64) pkg=${KERNEL_PKG_ARM64:-} ;;
	esac
	mkdir -p "$cache/debs" "$cache/kernel"
	if [ -z "$pkg" ]; then
		pkg=$(apt_memo "$cache" apt-cache depends "$meta" 2>/dev/null |
			sed -n "s/^ *Depends: \(linux-image-[0-9].*-$flavour\)\(:[a-z0-9]*\)\?\$/\1/p" | head -n1) || true
		if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
			log "apt does not know $meta yet: apt-get update"
			apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || true
			pkg=$(apt-cache depends "$meta" 2>/dev/null |
				sed -n "s/^ *Depends: \(linux-image-[0-9].*-$flavour\)\(:[a-z0-9]*\)\?\$/\1/p" | head -n1) || true
		fi
	fi
	if [ -n "$pkg" ]; then
		ver=$(apt_memo "$cache" apt-cache policy "$pkg$qual" 2>/dev/null | sed -n 's/^ *Candidate: //p' | head -n1) || true
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
			(cd "$cache/debs" && apt-get -q download "$pkg$qual=$ver" >&2) ||
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

# fetch_debs CACHE ARCH STAGE PKG... : downloads (once, into CACHE/debs-ARCH) the Debian
# packages PKG... of the foreign architecture ARCH (e.g. arm64) and, recursively, the
# library packages (lib*, zlib1g) they depend on, then unpacks them all into STAGE with
# `dpkg-deb -x` (no maintainer scripts, no chroot, no binfmt): STAGE is a root to copy
# binaries from (copy_elf_closure). STAGE is only rewritten when the set of .debs changes.
# Offline (apt cannot resolve the packages), the .debs already in the cache are used.
# Sets STAGE_DEBS: the sorted .deb file names (for stamps).
fetch_debs() {
	local cache=$1 arch=$2 stage=$3
	shift 3
	local dir=$cache/debs-$arch roots=() pkgs=() p uris missing=() f
	mkdir -p "$dir"
	dpkg --print-foreign-architectures | grep -qx "$arch" ||
		die "dpkg does not know the $arch architecture: run scripts/setup-arm64.sh (dpkg --add-architecture $arch)"
	for p in "$@"; do roots+=("$p:$arch"); done
	for p in $(apt_memo "$cache" apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
		--no-replaces --no-enhances "${roots[@]}" 2>/dev/null | grep -E "^[a-z0-9][^ ]*:$arch\$" | LC_ALL=C sort -u); do
		case "${p%:*}" in lib* | zlib1g) pkgs+=("$p") ;; esac
	done
	pkgs+=("${roots[@]}")
	# "'URI' FILE SIZE HASH" per package, for the candidate versions
	uris=$(apt_memo "$cache" apt-get download --print-uris "${pkgs[@]}" 2>/dev/null) || uris=
	STAGE_DEBS=
	if [ -n "$uris" ]; then
		STAGE_DEBS=$(awk '{ print $2 }' <<<"$uris" | LC_ALL=C sort -u)
		for f in $STAGE_DEBS; do [ -f "$dir/$f" ] || missing+=("${f%%_*}:$arch"); done
		if [ "${#missing[@]}" -gt 0 ]; then
			log "downloading ${#missing[@]} $arch packages into $dir"
			(cd "$dir" && apt-get -q download "${missing[@]}" >&2) ||
				die "apt-get download failed for: ${missing[*]}"
		fi
	else
		log "apt cannot resolve ${roots[*]} (offline?): using the .debs in $dir"
		STAGE_DEBS=$(find "$dir" -maxdepth 1 -name "*_$arch.deb" -printf '%f\n' | LC_ALL=C sort -V |
			awk -F_ '{ last[$1] = $0 } END { for (p in last) print last[p] }' | LC_ALL=C sort)
		[ -n "$STAGE_DEBS" ] || die "no $arch packages cached in $dir and apt cannot download them"
	fi
	if [ "$(cat "$stage/.debs" 2>/dev/null)" != "$STAGE_DEBS" ]; then
		log "unpacking $(wc -w <<<"$STAGE_DEBS") $arch packages into $stage"
		rm -rf "$stage" "$stage.tmp"
		mkdir -p "$stage.tmp"
		for f in $STAGE_DEBS; do
			[ -f "$dir/$f" ] || die "$dir/$f missing after download"
			dpkg-deb -x "$dir/$f" "$stage.tmp" || die "dpkg-deb -x $f failed"
		done
		printf '%s\n' "$STAGE_DEBS" >"$stage.tmp/.debs"
		mv "$stage.tmp" "$stage"
	fi
}

# copy_needed_libs STAGE ROOT ELF : copies the ELF interpreter and every shared library that
# ELF needs (recursively, by readelf's NEEDED entries) from STAGE (an unpacked root of the
# binary's architecture, see fetch_debs) into ROOT at the same paths; symlinks stay symlinks
# and their targets are copied too. Needs no ldd, so it works for foreign architectures.
copy_needed_libs() {
	local stage=$1 root=$2 elf=$3 rel n d found interp
	local queue=() libdirs=(lib/aarch64-linux-gnu usr/lib/aarch64-linux-gnu lib/x86_64-linux-gnu
		usr/lib/x86_64-linux-gnu lib usr/lib lib64)
	local -A seen=()
	interp=$(readelf -l "$elf" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \/\(.*\)\]$/\1/p')
	[ -z "$interp" ] || queue+=("$interp")
	for n in $(readelf -d "$elf" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
		queue+=("needed:$n")
	done
	while [ "${#queue[@]}" -gt 0 ]; do
		rel=${queue[0]}
		queue=("${queue[@]:1}")
		if [ "${rel#needed:}" != "$rel" ]; then
			n=${rel#needed:} found=
			for d in "${libdirs[@]}"; do
				if [ -e "$stage/$d/$n" ] || [ -L "$stage/$d/$n" ]; then found=$d/$n && break; fi
			done
			[ -n "$found" ] || die "library $n (needed by $elf) is not in $stage (fetch its package too)"
			rel=$found
		fi
		[ -z "${seen[$rel]:-}" ] || continue
		seen[$rel]=1
		[ -e "$stage/$rel" ] || [ -L "$stage/$rel" ] || die "$rel is not in $stage"
		mkdir -p "$root/$(dirname "$rel")"
		cp -a "$stage/$rel" "$root/$rel"
		if [ -L "$stage/$rel" ]; then
			local t
			t=$(readlink "$stage/$rel")
			case "$t" in /*) t=${t#/} ;; *) t=$(dirname "$rel")/$t ;; esac
			queue+=("$(realpath -m -s --relative-to=/ "/$t" | sed 's|^/||')")
			continue
		fi
		for n in $(readelf -d "$stage/$rel" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
			queue+=("needed:$n")
		done
	done
}

# copy_elf_closure STAGE ROOT REL... : copies each binary STAGE/REL to ROOT/REL with its
# interpreter and shared libraries (copy_needed_libs).
copy_elf_closure() {
	local stage=$1 root=$2 rel
	shift 2
	for rel in "$@"; do
		[ -f "$stage/$rel" ] || die "$rel is not in $stage"
		copy_file "$stage/$rel" "$root" "$rel"
		copy_needed_libs "$stage" "$root" "$stage/$rel"
	done
}
