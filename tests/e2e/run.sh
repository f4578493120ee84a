#!/usr/bin/env bash
# Runs the live-stack tests (pytest marker e2e) inside a network namespace of their own (see netns.sh).
#
#   bash tests/e2e/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec bash tests/e2e/netns.sh python3 -m pytest -q -p no:cacheprovider -m e2e tests/e2e "$@"
