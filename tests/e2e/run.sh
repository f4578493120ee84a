#!/usr/bin/env bash
# Runs the live-stack tests (pytest marker e2e) inside a network and mount namespace of their own.
#
# Several upstream components bind 0.0.0.0 and pods need routable, non-loopback IPs, so the whole stack runs
# where only this namespace's loopback exists: nothing it opens is reachable from outside, and nothing in it
# reaches beyond it. Inside, the pod CIDR (10.244.0.0/16) and the Service CIDR (10.0.0.0/24) are local
# addresses, and /tmp is a private tmpfs (llmaz writes a serving certificate to a fixed path there).
#
#   bash tests/e2e/run.sh [pytest args]      # needs root (or unprivileged user namespaces) and iproute2
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ "${LLMAZ_SERVERLESS_E2E_NETNS:-}" != 1 ]]; then
  for tool in unshare ip; do
    command -v "$tool" >/dev/null || { echo "tests/e2e/run.sh: '$tool' is needed (util-linux, iproute2)" >&2; exit 3; }
  done
  userns=()
  [[ $(id -u) -eq 0 ]] || userns=(--map-root-user)
  exec unshare "${userns[@]}" --net --mount --fork -- env LLMAZ_SERVERLESS_E2E_NETNS=1 bash "$0" "$@"
fi

ip link set lo up
ip route add local 10.244.0.0/16 dev lo table local
ip route add local 10.0.0.0/24 dev lo table local
mount -t tmpfs -o mode=1777 tmpfs /tmp
exec python3 -m pytest -q -p no:cacheprovider -m e2e tests/e2e "$@"
