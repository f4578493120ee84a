#!/usr/bin/env bash
# The project's test command: installs the package with its test extras, provides the real control plane
# (kube-apiserver, etcd, kube-controller-manager, helm; built from Go modules and cached outside the repo)
# and the upstream CRDs, then runs unit and integration tests.
#
#   bash tests/run.sh              # everything
#   bash tests/run.sh tests/unit   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

if ! bash tests/integration/tools/provide.sh all >/dev/null; then
  echo "tests/run.sh: could not provide the test control plane." >&2
  echo "  It is built from Go modules by tests/integration/tools/provide.sh (needs Go >= 1.24 and the Go" >&2
  echo "  module proxy), or taken from KUBEBUILDER_ASSETS=<dir with etcd and kube-apiserver>." >&2
  exit 3
fi

exec python3 -m pytest -q "${@:-tests}"
