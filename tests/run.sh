#!/usr/bin/env bash
# The project's test command: installs the package with its test extras, provides the real control plane
# (kube-apiserver, etcd, kube-controller-manager, helm) and the live stack (KEDA, llmaz, LeaderWorkerSet,
# kube-scheduler, kwok, kubectl, Redis; built from Go modules or unpacked from Debian's packages and cached
# outside the repo), a real node (kubelet, containerd) and the container image, and the upstream CRDs, then runs
# the unit and integration tests, then the live-stack tests (tests/e2e) inside a private network namespace.
#
#   bash tests/run.sh              # everything
#   bash tests/run.sh tests/unit   # extra arguments go to pytest (the live-stack tests: tests/e2e/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

if ! bash tests/integration/tools/provide.sh all >/dev/null; then
  echo "tests/run.sh: could not provide the test control plane." >&2
  echo "  It is built from Go modules by tests/integration/tools/provide.sh (needs Go >= 1.24 and the Go" >&2
  echo "  module proxy, and apt-get for Redis), or taken from KUBEBUILDER_ASSETS=<dir with etcd and" >&2
  echo "  kube-apiserver>; run it without >/dev/null to see which step failed." >&2
  exit 3
fi

# The install tests (tests/e2e/test_install.py) run the chart on a real node from the image built here: kubelet,
# containerd, runc and the CNI plugins, then the image itself (it needs the network, so it is built before the
# live-stack tests enter their private network namespace).
if ! bash tests/integration/tools/provide.sh node >/dev/null || ! bash deploy/image/build.sh >/dev/null; then
  echo "tests/run.sh: could not provide the real node or build the image (needs root and apt-get;" >&2
  echo "  run tests/integration/tools/provide.sh node and deploy/image/build.sh to see which step failed)." >&2
  exit 3
fi

if [[ $# -gt 0 ]]; then
  exec python3 -m pytest -q "$@"
fi

status=0
python3 -m pytest -q -m "not e2e" tests || status=$?
bash tests/e2e/run.sh || { rc=$?; [[ $status -ne 0 ]] || status=$rc; }
exit "$status"
