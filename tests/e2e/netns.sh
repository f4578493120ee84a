#!/usr/bin/env bash
# Runs a command inside a network and mount namespace of its own, set up like a small cluster network:
#
#   - only this namespace's loopback exists: nothing opened inside is reachable from outside, and nothing
#     inside reaches beyond it (several upstream components bind 0.0.0.0);
#   - the pod CIDR 10.244.0.0/16, the Service CIDR 10.0.0.0/24 and the addresses of in-cluster components
#     10.243.0.0/16 are local addresses (pods need routable, non-loopback IPs: EndpointSlices refuse loopback);
#   - /tmp is a private tmpfs (llmaz writes a serving certificate to a fixed path there); a working directory
#     under /tmp (a CI clone) stays visible at its path;
#   - /etc/hosts is a private copy that the live stack's cluster-DNS stand-in keeps in step with Services.
#
#   bash tests/e2e/netns.sh CMD [ARGS...]      # needs root (or unprivileged user namespaces) and iproute2
set -euo pipefail

if [[ "${LLMAZ_SERVERLESS_E2E_NETNS:-}" != 1 ]]; then
  for tool in unshare ip mount; do
    command -v "$tool" >/dev/null || { echo "tests/e2e/netns.sh: '$tool' is needed (util-linux, iproute2)" >&2; exit 3; }
  done
  userns=()
  [[ $(id -u) -eq 0 ]] || userns=(--map-root-user)
  exec unshare "${userns[@]}" --net --mount --fork -- env LLMAZ_SERVERLESS_E2E_NETNS=1 bash "$0" "$@"
fi

ip link set lo up
for cidr in 10.244.0.0/16 10.0.0.0/24 10.243.0.0/16; do
  ip route add local "$cidr" dev lo table local
done
# The private /tmp hides whatever was under /tmp, and the checkout this runs from may be there (a CI clone in
# a temporary directory): keep a handle on the working directory and bind it back at the same path.
cwd=$(pwd -P)
if [[ $cwd == /tmp || $cwd == /tmp/* ]]; then
  exec 9<"$cwd"
fi
mount -t tmpfs -o mode=1777 tmpfs /tmp
if [[ $cwd == /tmp/* ]]; then
  mkdir -p "$cwd"
  mount --no-canonicalize --bind /proc/self/fd/9 "$cwd"   # the opened directory, not the path (now hidden)
fi
if [[ $cwd == /tmp || $cwd == /tmp/* ]]; then
  exec 9<&-
  cd "$cwd"
fi
cp /etc/hosts /tmp/hosts
mount --bind /tmp/hosts /etc/hosts
export LLMAZ_SERVERLESS_E2E_HOSTS=/etc/hosts
exec "$@"
