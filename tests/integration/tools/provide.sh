#!/usr/bin/env bash
# Provide the real control plane and the upstream CRDs that the integration tests run against.
#
# Everything is built or fetched from Go modules at the pinned versions below and kept in a cache
# directory outside the repository ($LLMAZ_SERVERLESS_CACHE, default ~/.cache/llmaz-serverless).
# A second run reuses what is there. Nothing here is committed to git.
#
#   bin/etcd  bin/kube-apiserver  bin/kube-controller-manager  bin/helm       (control plane)
#   bin/kube-scheduler  bin/kubectl  bin/keda-operator  bin/keda-adapter  bin/llmaz-manager
#   bin/lws-manager  bin/kwok  bin/redis-server  bin/kube-proxy  bin/iptables
#   bin/keda-http-interceptor  bin/keda-http-scaler  bin/prometheus             (live stack, tests/e2e)
#   bin/promtool                        (the hold trigger's PromQL on Prometheus' own engine, tests/integration)
#   bin/kubelet, image/pause.oci.tar, containerd + runc + CNI plugins (Debian)  (a real node, tests/e2e)
#   buildah + mmdebstrap (Debian)                                                (deploy/image/build.sh)
#   crds/<project>/*.yaml  config/<project>/*.yaml
#
# If KUBEBUILDER_ASSETS points at a directory that already holds etcd and kube-apiserver
# (the envtest convention), those binaries are used instead of building them.
#
# The live stack (tests/e2e) adds the upstream controllers that make a Playground at zero really wake up:
# KEDA's operator and metrics adapter, the llmaz manager, LeaderWorkerSet, kube-scheduler, kwok (the fake
# kubelet) and kubectl, each built from its Go module at a pinned version in a small wrapper module, and
# Redis from Debian's packages (unpacked into the cache; no daemon is started).
#
# The real node (kubelet from the same Kubernetes module, Debian's containerd, runc and CNI plugins, and a
# local pause image: no registry is needed) and the image build tools are installed with apt-get.
#
# Usage: provide.sh [all|control-plane|crds|helm|stack|node|image]   (default: all)
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"          # KEDA v2.20 supports Kubernetes 1.33-1.35
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
LLMAZ_VERSION="v0.1.1"
LLMAZ_ZIP_SHA256="fce4bf8a00ebc0090837a0f9089082d0f3a35a063ea5b7b385300c8b3922b5a5"
LWS_VERSION="v0.7.0"
KEDA_VERSION="v2.20.2"            # v2.21 targets Kubernetes 0.36 libraries; v2.20 supports 1.33-1.35
HTTP_ADDON_VERSION="v0.15.0"
KWOK_VERSION="v0.8.0"
PROMETHEUS_MODULE_VERSION="v0.304.2"     # Prometheus v3.4.2 (its Go module is versioned v0.3XX.Y)

CACHE="${LLMAZ_SERVERLESS_CACHE:-$HOME/.cache/llmaz-serverless}"
BIN="$CACHE/bin"
CRDS="$CACHE/crds"
CONFIG="$CACHE/config"
WORK="$CACHE/build"
mkdir -p "$BIN" "$CRDS" "$CONFIG" "$WORK"

log() { printf '[provide] %s\n' "$*" >&2; }

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "Go is required to build the test control plane (install Go >= 1.24 and re-run)."
    exit 3
  fi
}

# Stamp the release into /version (helm and clients read gitVersion); the stamp file records the recipe.
K8S_STAMP="$K8S_VERSION+versioned"
version_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$f"
}

build_k8s() {
  local want=("kube-apiserver" "kube-controller-manager" "$@")
  local missing=()
  for b in "${want[@]}"; do
    if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$b" ]]; then
      ln -sf "$KUBEBUILDER_ASSETS/$b" "$BIN/$b"
      echo "KUBEBUILDER_ASSETS" >"$BIN/$b.version"
      continue
    fi
    [[ -L "$BIN/$b" ]] && rm -f "$BIN/$b"   # a link left from an earlier KUBEBUILDER_ASSETS
    [[ -x "$BIN/$b" && -f "$BIN/$b.version" && "$(cat "$BIN/$b.version")" == "$K8S_STAMP" ]] \
      || missing+=("$b")
  done
  [[ ${#missing[@]} -eq 0 ]] && { log "kubernetes binaries cached"; return; }
  need_go
  local mod="$WORK/kubernetes-$K8S_VERSION"
  mkdir -p "$mod"
  # k8s.io/kubernetes points every k8s.io/* staging module at ./staging; a consumer must pin each
  # of them to the published v0.X.Y that matches v1.X.Y.
  local staging="v0${K8S_VERSION#v1}"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module llmaz-serverless/controlplane"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" \
      | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } >"$mod/go.mod"
  cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
  (
    cd "$mod"
    log "resolving k8s.io/kubernetes $K8S_VERSION modules"
    GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
    GOFLAGS=-mod=mod go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    for b in "${missing[@]}"; do
      log "building $b $K8S_VERSION (several minutes on a cold cache)"
      CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w $(version_ldflags)" \
        -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b"
      mv "$BIN/$b.tmp" "$BIN/$b"
      echo "$K8S_STAMP" >"$BIN/$b.version"
    done
  )
}

build_etcd() {
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
    ln -sf "$KUBEBUILDER_ASSETS/etcd" "$BIN/etcd"; log "etcd from KUBEBUILDER_ASSETS"; return
  fi
  if [[ -x "$BIN/etcd" && -f "$BIN/etcd.version" && "$(cat "$BIN/etcd.version")" == "$ETCD_VERSION" ]]; then
    log "etcd cached"; return
  fi
  need_go
  local mod="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  cat >"$mod/go.mod" <<EOF
module llmaz-serverless/etcd

go 1.24.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
  (
    cd "$mod"
    log "building etcd $ETCD_VERSION"
    GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$BIN/etcd.tmp" "$BIN/etcd"
    echo "$ETCD_VERSION" >"$BIN/etcd.version"
  )
}

build_helm() {
  if [[ -x "$BIN/helm" && -f "$BIN/helm.version" && "$(cat "$BIN/helm.version")" == "$HELM_VERSION" ]]; then
    log "helm cached"; return
  fi
  need_go
  log "building helm $HELM_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "$HELM_VERSION" >"$BIN/helm.version"
}

# fetch_crds <module@version> <dest-subdir> <sha256 or ""> <path-in-zip>...
fetch_crds() {
  local modver="$1" dest="$CRDS/$2" sum="$3"; shift 3
  local stamp="$dest/.version"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$modver" ]]; then return; fi
  need_go
  local mod="${modver%@*}"
  local zip
  if [[ -n "$sum" ]]; then
    # This module version is not in the public checksum database; its zip is pinned by hash here.
    zip="$(GONOSUMDB="$mod" GOFLAGS=-mod=mod go mod download -json "$modver" | sed -n 's/.*"Zip": "\(.*\)".*/\1/p')"
    echo "$sum  $zip" | sha256sum -c --quiet - || { log "checksum mismatch for $modver"; exit 4; }
  else
    zip="$(GOFLAGS=-mod=mod go mod download -json "$modver" | sed -n 's/.*"Zip": "\(.*\)".*/\1/p')"
  fi
  [[ -f "$zip" ]] || { log "could not download $modver from the Go module proxy"; exit 4; }
  rm -rf "$dest"; mkdir -p "$dest"
  for p in "$@"; do
    unzip -p "$zip" "$modver/$p" >"$dest/$(basename "$p")"
    [[ -s "$dest/$(basename "$p")" ]] || { log "$p missing in $modver"; exit 4; }
  done
  echo "$modver" >"$stamp"
  log "CRDs of $modver in $dest"
}

provide_crds() {
  fetch_crds "github.com/inftyai/llmaz@$LLMAZ_VERSION" llmaz "$LLMAZ_ZIP_SHA256" \
    config/crd/bases/inference.llmaz.io_playgrounds.yaml \
    config/crd/bases/inference.llmaz.io_services.yaml \
    config/crd/bases/inference.llmaz.io_backendruntimes.yaml \
    config/crd/bases/llmaz.io_openmodels.yaml
  fetch_crds "sigs.k8s.io/lws@$LWS_VERSION" lws "" \
    config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml
  fetch_crds "github.com/kedacore/keda/v2@$KEDA_VERSION" keda "" \
    config/crd/bases/keda.sh_scaledobjects.yaml \
    config/crd/bases/keda.sh_triggerauthentications.yaml \
    config/crd/bases/keda.sh_clustertriggerauthentications.yaml
  fetch_crds "github.com/kedacore/http-add-on@$HTTP_ADDON_VERSION" http-add-on "" \
    config/crd/bases/http.keda.sh_interceptorroutes.yaml
}

# build_wrapped <module> <version> <stamp> <replace-from-upstream: yes|no> <zip sha256 or ""> <bin>=<package>...
# Builds binaries of an upstream Go module at a pinned version through a small wrapper module (`go install
# pkg@version` cannot honour the module's own replace block, and the proxy here refuses version lists).
build_wrapped() {
  local mod="$1" ver="$2" stamp="$3" upstream_replace="$4" sum="$5"; shift 5
  local missing=() spec
  for spec in "$@"; do
    local b="${spec%%=*}"
    [[ -x "$BIN/$b" && -f "$BIN/$b.version" && "$(cat "$BIN/$b.version")" == "$stamp" ]] || missing+=("$spec")
  done
  [[ ${#missing[@]} -eq 0 ]] && { log "$mod $ver cached"; return; }
  need_go
  local dir="$WORK/$(echo "$mod" | tr '/.' '__')-$ver"
  mkdir -p "$dir"
  local nosum=(env)
  if [[ -n "$sum" ]]; then
    # Not in the public checksum database: the module zip is pinned by its hash here instead.
    nosum=(env "GONOSUMDB=$mod")
    local zip
    zip="$("${nosum[@]}" GOFLAGS=-mod=mod go mod download -json "$mod@$ver" | sed -n 's/.*"Zip": "\(.*\)".*/\1/p')"
    echo "$sum  $zip" | sha256sum -c --quiet - || { log "checksum mismatch for $mod@$ver"; exit 4; }
  fi
  local gomod
  gomod="$("${nosum[@]}" GOFLAGS=-mod=mod go mod download -json "$mod@$ver" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  local gover
  gover="$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod" | head -n1)"
  {
    echo "module llmaz-serverless/wrap-$(basename "$dir")"
    echo
    echo "go ${gover:-1.24.0}"
    echo
    echo "require $mod $ver"
    if [[ "$upstream_replace" == yes ]]; then
      # The module pins its dependencies with a replace block; a consumer must repeat it to build the same.
      echo
      awk '/^replace \($/ {on=1; print; next} on && /^\)$/ {print; on=0; next} on {print} /^replace [^(]/ {print}' "$gomod"
    fi
  } >"$dir/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for spec in "$@"; do echo "	_ \"${spec#*=}\""; done
    echo ")"
  } >"$dir/tools.go"
  (
    cd "$dir"
    log "resolving $mod $ver"
    "${nosum[@]}" GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
    "${nosum[@]}" GOFLAGS=-mod=mod go get "$mod@$ver" >/dev/null
    for spec in "${missing[@]}"; do
      local b="${spec%%=*}" pkg="${spec#*=}"
      log "building $b from $mod $ver"
      local t0=$SECONDS
      "${nosum[@]}" CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$BIN/$b.tmp" "$pkg"
      mv "$BIN/$b.tmp" "$BIN/$b"
      echo "$stamp" >"$BIN/$b.version"
      log "built $b in $((SECONDS - t0))s"
    done
  )
}

build_kwok() {
  local stamp="sigs.k8s.io/kwok@$KWOK_VERSION"
  if [[ -x "$BIN/kwok" && -f "$BIN/kwok.version" && "$(cat "$BIN/kwok.version")" == "$stamp" ]]; then
    log "kwok cached"; return
  fi
  need_go
  log "building kwok $KWOK_VERSION"
  GOBIN="$WORK/kwok-bin" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$WORK/kwok-bin/kwok" "$BIN/kwok"
  echo "$stamp" >"$BIN/kwok.version"
}

# Debian packages unpacked into the cache (no maintainer scripts, so no daemon is started).
# deb_unpack <stamp-name> <binary path inside the package root> <package>...
deb_unpack() {
  local name="$1" inner="$2"; shift 2
  local root="$CACHE/debs/$name"
  if [[ -x "$root/$inner" && -f "$root/.packages" && "$(cat "$root/.packages")" == "$*" ]]; then
    deb_wrapper "$name" "$root" "$inner"; log "$name cached"; return
  fi
  command -v apt-get >/dev/null || { log "$name comes from Debian's packages: apt-get is needed"; exit 3; }
  local dl="$WORK/debs-$name"
  rm -rf "$dl" "$root"; mkdir -p "$dl" "$root"
  if ! (cd "$dl" && apt-get download "$@" >/dev/null 2>&1); then
    log "apt-get download $* failed; refreshing the package lists (apt-get update)"
    apt-get update >/dev/null 2>&1 || { log "apt-get update failed (run as root, or install $* yourself)"; exit 3; }
    (cd "$dl" && apt-get download "$@" >/dev/null) || { log "could not download $*"; exit 3; }
  fi
  for deb in "$dl"/*.deb; do dpkg -x "$deb" "$root"; done
  [[ -x "$root/$inner" ]] || { log "$inner not found in $*"; exit 3; }
  echo "$*" >"$root/.packages"
  deb_wrapper "$name" "$root" "$inner"
  log "$name from Debian packages in $root"
}

# The unpacked program finds its shared libraries next to it, not on the machine's library path.
deb_wrapper() {
  local name="$1" root="$2" inner="$3" libs
  libs="$(find "$root" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -)"
  rm -f "$BIN/$name"
  printf '#!/bin/sh\nexec env LD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "%s" "$@"\n' \
    "$libs" "$root/$inner" >"$BIN/$name"
  chmod +x "$BIN/$name"
}

# Upstream configuration the live stack reads at test time (never committed): LeaderWorkerSet's webhook
# configurations, and the KEDA CRDs the operator insists on besides the ones the builders are checked against.
provide_stack_config() {
  fetch_crds "github.com/kedacore/keda/v2@$KEDA_VERSION" keda-extra "" \
    config/crd/bases/keda.sh_scaledjobs.yaml \
    config/crd/bases/eventing.keda.sh_cloudeventsources.yaml \
    config/crd/bases/eventing.keda.sh_clustercloudeventsources.yaml
  fetch_crds "github.com/kedacore/http-add-on@$HTTP_ADDON_VERSION" http-add-on-extra "" \
    config/crd/bases/http.keda.sh_httpscaledobjects.yaml
  fetch_crds "sigs.k8s.io/lws@$LWS_VERSION" lws-webhook "" \
    config/webhook/manifests.yaml
}

provide_stack() {
  provide_stack_config
  build_k8s kube-scheduler kubectl kube-proxy
  build_wrapped github.com/kedacore/keda/v2 "$KEDA_VERSION" "keda@$KEDA_VERSION" yes "" \
    keda-operator=github.com/kedacore/keda/v2/cmd/operator \
    keda-adapter=github.com/kedacore/keda/v2/cmd/adapter
  build_wrapped github.com/inftyai/llmaz "$LLMAZ_VERSION" "llmaz@$LLMAZ_VERSION" no "$LLMAZ_ZIP_SHA256" \
    llmaz-manager=github.com/inftyai/llmaz/cmd
  build_wrapped sigs.k8s.io/lws "$LWS_VERSION" "lws@$LWS_VERSION" no "" \
    lws-manager=sigs.k8s.io/lws/cmd
  build_wrapped github.com/kedacore/http-add-on "$HTTP_ADDON_VERSION" "http-add-on@$HTTP_ADDON_VERSION" no "" \
    keda-http-interceptor=github.com/kedacore/http-add-on/interceptor \
    keda-http-scaler=github.com/kedacore/http-add-on/scaler
  build_kwok
  deb_unpack redis-server usr/bin/redis-server redis-server redis-tools liblzf1 libjemalloc2
  # Debian's Prometheus is built without Kubernetes service discovery, which the live stack uses as a cluster's
  # Prometheus does (role: pod); so it is built from its module like the controllers. promtool, from the same
  # module, evaluates the hold trigger's PromQL on synthetic series (tests/integration/test_hold_promql.py).
  build_wrapped github.com/prometheus/prometheus "$PROMETHEUS_MODULE_VERSION" \
    "prometheus@$PROMETHEUS_MODULE_VERSION" no "" prometheus=github.com/prometheus/prometheus/cmd/prometheus \
    promtool=github.com/prometheus/prometheus/cmd/promtool
  provide_iptables
}

# kube-proxy programs ClusterIP routing with iptables (Debian's package; installing it starts no daemon).
provide_iptables() {
  if command -v iptables-restore >/dev/null && command -v iptables >/dev/null; then log "iptables present"; return; fi
  command -v apt-get >/dev/null || { log "iptables is needed (kube-proxy): install it with your package manager"; exit 3; }
  log "installing iptables from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables >/dev/null 2>&1 || {
    apt-get update >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables >/dev/null
  } || { log "could not install iptables"; exit 3; }
}

# apt_install <what for> <command or absolute path that exists afterwards> <package>...: Debian's packages,
# installed once.
apt_install() {
  local why="$1" probe="$2"; shift 2
  if [[ $probe == /* && -x $probe ]] || { [[ $probe != /* ]] && command -v "$probe" >/dev/null; }; then
    log "$why present"; return
  fi
  command -v apt-get >/dev/null || { log "$why: install $* with your package manager"; exit 3; }
  log "installing $* from Debian's packages ($why)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 || {
    apt-get update >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null
  } || { log "could not install $* (needs root)"; exit 3; }
}

# Image builds without a Docker daemon (deploy/image/build.sh).
provide_image_tools() {
  apt_install "image build (buildah)" buildah buildah
  apt_install "image build (mmdebstrap)" mmdebstrap mmdebstrap
}

# A real node for the live stack: kubelet (same module and version as the control plane), containerd + runc
# (Debian; started by the tests with their own configuration, no system service), the CNI bridge plugins,
# and a pause image built locally from Debian's busybox-static (no registry can be assumed).
provide_node() {
  build_k8s kubelet
  apt_install "node runtime (containerd)" containerd containerd runc
  apt_install "node networking (CNI plugins)" /usr/lib/cni/bridge containernetworking-plugins
  provide_image_tools
  provide_pause_image
}

provide_pause_image() {
  local out="$CACHE/image/pause.oci.tar" stamp="busybox-static pause v1"
  if [[ -f "$out" && -f "$out.version" && "$(cat "$out.version")" == "$stamp" ]]; then log "pause image cached"; return; fi
  local dl="$WORK/pause"
  rm -rf "$dl"; mkdir -p "$dl/root" "$CACHE/image"
  (cd "$dl" && apt-get download busybox-static >/dev/null 2>&1) || {
    apt-get update >/dev/null 2>&1; (cd "$dl" && apt-get download busybox-static >/dev/null); } \
    || { log "could not download busybox-static"; exit 3; }
  dpkg -x "$dl"/busybox-static_*.deb "$dl/root"
  local bh=(buildah --root "$CACHE/image/storage" --runroot "$CACHE/image/run" --storage-driver vfs)
  local ctr
  ctr="$("${bh[@]}" from scratch)"
  "${bh[@]}" copy "$ctr" "$dl/root/bin/busybox" /bin/busybox >/dev/null
  # The sandbox's only job is to hold the pod's namespaces: sleep as long as a 32-bit timer allows.
  "${bh[@]}" config --entrypoint '["/bin/busybox","sleep","2147483647"]' --user 65535:65535 "$ctr"
  "${bh[@]}" commit --quiet --rm --timestamp 0 "$ctr" localhost/llmaz-serverless-pause:1 >/dev/null
  rm -f "$out"
  "${bh[@]}" push --quiet --format oci localhost/llmaz-serverless-pause:1 "oci-archive:$out:localhost/llmaz-serverless-pause:1"
  "${bh[@]}" rmi localhost/llmaz-serverless-pause:1 >/dev/null 2>&1 || true
  echo "$stamp" >"$out.version"
  log "pause image in $out"
}

what="${1:-all}"
case "$what" in
  control-plane) build_etcd; build_k8s ;;
  crds) provide_crds ;;
  helm) build_helm ;;
  stack) provide_crds; build_etcd; build_k8s; provide_stack ;;
  node) provide_crds; build_etcd; build_k8s; provide_node ;;
  image) provide_image_tools ;;
  all) provide_crds; build_etcd; build_k8s; build_helm; provide_stack ;;
  *) echo "usage: $0 [all|control-plane|crds|helm|stack|node|image]" >&2; exit 2 ;;
esac
echo "$CACHE"
