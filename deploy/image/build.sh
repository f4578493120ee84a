#!/usr/bin/env bash
# Build the llmaz-serverless container image from this checkout without a Docker daemon and without a
# registry of base images, into an OCI archive that containerd imports (`ctr -n k8s.io images import`) and
# that skopeo can push to any registry.
#
#   deploy/image/build.sh [TAG]        # TAG defaults to the chart's appVersion
#
# 1. Base: Debian (bookworm) with python3, python3-venv and passwd, made from Debian's packages with
#    mmdebstrap and committed with buildah as localhost/llmaz-serverless-base:<recipe hash>. Cached: built
#    again only when its recipe (suite, mirrors, packages, epoch) changes.
# 2. Image: the repository's Dockerfile, unchanged, built by `buildah bud` with BASE_IMAGE pointing at that
#    base (chroot isolation, vfs storage: no daemon, no overlay mounts).
# 3. Output: $OUT (default <cache>/image/llmaz-serverless-<TAG>.oci.tar), image reference
#    localhost/llmaz-serverless:<TAG>. The last line printed is the archive's path.
#
# Reproducible: file times and the creation date are SOURCE_DATE_EPOCH (default: the commit time of HEAD),
# Python dependencies are pinned in deploy/image/requirements.lock, bytecode is hash-based, and the base is
# built with a fixed epoch. Two builds of one commit against the same Debian package versions give the same
# image digest (the package versions of the base are written next to the archive: <archive>.packages).
# Pin the Debian side too by pointing DEBIAN_MIRROR/DEBIAN_SECURITY_MIRROR at a snapshot.debian.org date.
#
# Needs root (mmdebstrap's root mode, buildah's chroot isolation) and buildah + mmdebstrap, which
# `bash tests/integration/tools/provide.sh image` installs from Debian's packages.
#
# Environment: SOURCE_DATE_EPOCH, OUT, LLMAZ_SERVERLESS_CACHE (default ~/.cache/llmaz-serverless),
# DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
# DEBIAN_SECURITY_MIRROR (http://deb.debian.org/debian-security).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
log() { printf '[image] %s\n' "$*" >&2; }
die() { log "$*"; exit 3; }

for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null \
    || die "$tool not found: install it with 'bash tests/integration/tools/provide.sh image' (Debian packages)"
done
[[ $(id -u) -eq 0 ]] || die "run as root (mmdebstrap's root mode and buildah's chroot isolation need it)"

app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/deploy/helm/llmaz-serverless/Chart.yaml")"
tag="${1:-$app_version}"
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid image tag '$tag' (letters, digits, _ . -; at most 128)"

cache="${LLMAZ_SERVERLESS_CACHE:-$HOME/.cache/llmaz-serverless}/image"
mkdir -p "$cache"
out="${OUT:-$cache/llmaz-serverless-$tag.oci.tar}"
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || true)"
  [[ -n "$SOURCE_DATE_EPOCH" ]] || die "set SOURCE_DATE_EPOCH (not a git checkout, so no commit time to use)"
fi
[[ "$SOURCE_DATE_EPOCH" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, not '$SOURCE_DATE_EPOCH'"
export SOURCE_DATE_EPOCH

suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
packages="python3,python3-venv,passwd"
base_epoch=1735689600   # 2025-01-01T00:00:00Z: the base's file times, independent of the commit

# buildah's own storage in the cache: vfs needs no overlay support from the kernel or the filesystem.
bh=(buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver vfs)

t0=$SECONDS
recipe="$suite $mirror $security $packages $base_epoch"
base_ref="localhost/llmaz-serverless-base:$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
if "${bh[@]}" inspect --type image "$base_ref" >/dev/null 2>&1; then
  log "base $base_ref cached"
else
  log "building base $base_ref from Debian $suite packages ($packages)"
  rootfs="$cache/base-rootfs.tar"
  # Documentation and translations are not needed in a server image.
  SOURCE_DATE_EPOCH="$base_epoch" mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
    --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='chroot "$1" dpkg-query -W -f "\${Package}=\${Version}\n" > "$1/.packages"' \
    --customize-hook="copy-out /.packages $cache" \
    --customize-hook='rm -f "$1/.packages"' \
    "$suite" "$rootfs" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main" \
    </dev/null || die "mmdebstrap failed (is $mirror reachable? set DEBIAN_MIRROR)"
  ctr="$("${bh[@]}" from scratch)"
  "${bh[@]}" add --quiet "$ctr" "$rootfs" / >/dev/null
  "${bh[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
  "${bh[@]}" commit --quiet --rm --timestamp "$base_epoch" "$ctr" "$base_ref" >/dev/null
  mv "$cache/.packages" "$cache/base-${base_ref##*:}.packages"
  rm -f "$rootfs"
  log "base built in $((SECONDS - t0))s"
fi

# pip in the build stage reaches the package index the way pip here does: the same index and CA bundle
# (a TLS-intercepting proxy's CA is mounted read-only for the build; it never lands in the image).
pip_args=()
[[ -n "${PIP_INDEX_URL:-}" ]] && pip_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
pip_cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
if [[ -n "$pip_cert" ]]; then
  [[ -f "$pip_cert" ]] || die "PIP_CERT=$pip_cert is not a file"
  pip_args+=(--volume "$pip_cert:/run/pip-ca.pem:ro" --build-arg "PIP_CERT=/run/pip-ca.pem")
fi

ref="localhost/llmaz-serverless:$tag"
# Same inputs, same image (the build is reproducible): an archive built from identical inputs is kept.
inputs="$( { echo "$tag $SOURCE_DATE_EPOCH $base_ref"; cd "$repo" && find Dockerfile .dockerignore pyproject.toml \
  README.md webhook certs deploy/image/requirements.lock -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
  ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-64)"
if [[ -f "$out" && -f "$out.inputs" && "$(cat "$out.inputs")" == "$inputs" ]]; then
  log "$ref: archive from identical inputs kept ($out, manifest $(cat "$out.digest"))"
  echo "$out"
  exit 0
fi
t1=$SECONDS
log "building $ref from $repo/Dockerfile (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
"${bh[@]}" bud --quiet --isolation chroot --pull=never --layers=false \
  --timestamp "$SOURCE_DATE_EPOCH" "${pip_args[@]}" \
  --build-arg "BASE_IMAGE=$base_ref" --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" \
  -f "$repo/Dockerfile" -t "$ref" "$repo" >/dev/null
log "image built in $((SECONDS - t1))s"

rm -f "$out" "$out.digest" "$out.inputs"
"${bh[@]}" push --quiet --format oci --digestfile "$out.digest" "$ref" "oci-archive:$out:$ref"
cp "$cache/base-${base_ref##*:}.packages" "$out.packages" 2>/dev/null || true
echo "$inputs" >"$out.inputs"
"${bh[@]}" rmi "$ref" >/dev/null 2>&1 || true   # the archive is the product; keep the base cached only
size_mib=$(( $(stat -c %s "$out") / 1048576 ))
log "$ref: manifest $(cat "$out.digest"), archive ${size_mib} MiB, total $((SECONDS - t0))s"
echo "$out"
