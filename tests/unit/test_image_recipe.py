"""The image recipe without building it: the pinned dependency versions still satisfy pyproject.toml, and the
Dockerfile keeps what deploy/image/build.sh and the chart rely on (the base-image argument, a numeric non-root
user). The build itself runs in tests/run.sh (deploy/image/build.sh) and the image runs in tests/e2e."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "deploy" / "image" / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_lock_pins_every_runtime_dependency_within_its_range():
    pins = _lock()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        assert name in pins, f"{dep.name} is a dependency but not pinned in deploy/image/requirements.lock"
        assert pins[name] in dep.specifier, f"{dep.name}=={pins[name]} does not satisfy {dep}"
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for dep in map(Requirement, build):
        assert canonicalize_name(dep.name) in pins, f"build requirement {dep.name} not pinned (no-build-isolation)"
        assert pins[canonicalize_name(dep.name)] in dep.specifier


def test_dockerfile_takes_a_base_image_and_runs_as_a_numeric_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", text, re.M)) == 2
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users == ["65532:65532"], "a numeric user lets runAsNonRoot be checked without /etc/passwd"
    assert "deploy/image/requirements.lock" in text
    assert "!deploy/image/requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()
