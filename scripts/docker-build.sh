#!/usr/bin/env bash
# Builds the statically linked `cohort` binary and the FROM scratch image (offline).
#
# Usage: scripts/docker-build.sh [--no-cargo] [--src DIR] [--tag TAG]
#   --no-cargo  skip cargo: stage the binary already in the target dir and build the image
#   --src DIR   the workspace to build (default: this repository)
#   --tag TAG   image tag (default: $COHORT_IMAGE or cohort:dev)
#
# Environment:
#   COHORT_STATIC_TARGET_DIR  cargo target dir for the static build (one dedicated dir, so
#                             the crt-static dependency builds are reused; default:
#                             ~/.cache/cohort/target-static)
#   COHORT_STRIP=0            keep debug info in the staged binary (default: strip it)
#
# Why these flags: `-C target-feature=+crt-static` links glibc statically; the explicit
# `--target` is required, otherwise RUSTFLAGS also reach proc-macros/build scripts and the
# build fails (rust-lang/rust#78210). Needs libc.a (Debian libc6-dev). The binary resolves
# /dns4/ multiaddrs through libp2p-dns (hickory, pure Rust: reads /etc/resolv.conf, which
# Docker provides), not through glibc NSS.
set -euo pipefail
# shellcheck source=scripts/testnet-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/testnet-lib.sh"

src="$COHORT_ROOT"
tag="$COHORT_IMAGE"
cargo_build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-cargo) cargo_build=0 ;;
        --src) src="${2:?--src DIR}"; shift ;;
        --tag) tag="${2:?--tag TAG}"; shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
    shift
done

target=x86_64-unknown-linux-gnu
target_dir="${COHORT_STATIC_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cohort/target-static}"
bin="$target_dir/$target/release/cohort"

if [[ $cargo_build -eq 1 ]]; then
    log "cargo build (static, release) of $src into $target_dir"
    start=$(date +%s)
    (
        cd "$src"
        RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
            CARGO_TARGET_DIR="$target_dir" \
            cargo build --release --locked -p node --bin cohort --target "$target"
    )
    log "cargo build took $(($(date +%s) - start)) s"
fi
[[ -x "$bin" ]] || die "no binary at $bin (run without --no-cargo)"

# The image has no libc and no loader: refuse anything dynamically linked.
if readelf -l "$bin" 2>/dev/null | grep -q 'INTERP' || readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    die "$bin is dynamically linked; it cannot run in a FROM scratch image"
fi
if command -v ldd >/dev/null 2>&1; then
    ldd_out="$(ldd "$bin" 2>&1 || true)"
    case "$ldd_out" in
        *"not a dynamic executable"* | *"statically linked"*) log "ldd: ${ldd_out//$'\n'/ }" ;;
        *) die "ldd says $bin is dynamic: $ldd_out" ;;
    esac
fi

# Stage the build context: docker/out/{cohort,rootfs/{data,tmp,testnet}} (gitignored).
out="$COHORT_ROOT/docker/out"
mkdir -p "$out/rootfs/data" "$out/rootfs/tmp" "$out/rootfs/testnet"
# A new named volume mounted on /testnet starts with this mode (Docker copies it up), so the
# compose init service can write the keys there as any uid.
chmod 1777 "$out/rootfs/data" "$out/rootfs/tmp" "$out/rootfs/testnet"
cp "$bin" "$out/cohort.tmp"
if [[ "${COHORT_STRIP:-1}" != 0 ]] && command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$out/cohort.tmp"
fi
chmod 0755 "$out/cohort.tmp"
mv "$out/cohort.tmp" "$out/cohort"
log "staged $out/cohort ($(du -h "$out/cohort" | cut -f1)): $("$out/cohort" --version 2>&1 | head -n 1)"

# FROM scratch never pulls. The legacy builder is used where buildx is absent (as here);
# BuildKit works as well since the Dockerfile has no "# syntax=" line.
start=$(date +%s)
docker build -t "$tag" "$COHORT_ROOT/docker"
log "image $tag built in $(($(date +%s) - start)) s: $(docker image inspect -f '{{.Size}}' "$tag") bytes"
