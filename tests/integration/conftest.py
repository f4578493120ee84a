"""Fixtures for the integration tests: a real kube-apiserver + etcd + kube-controller-manager.

The control plane is started once per session (see ``controlplane.ControlPlane``) with every
upstream CRD installed. When the binaries are missing the ``control_plane`` fixture FAILS with
instructions (``bash tests/integration/tools/provide.sh``); it never skips.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .controlplane import ControlPlane, ControlPlaneError, ControlPlaneUnavailable, crd_paths, find_binaries

_HERE = Path(__file__).resolve().parent
_FAILED = pytest.StashKey[bool]()
_CP_INFO = pytest.StashKey[list]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, not only this directory's.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        item.config.stash[_FAILED] = True


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    for line in config.stash.get(_CP_INFO, []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    info = pytestconfig.stash.setdefault(_CP_INFO, [])
    failure: str | None = None
    try:
        # find the binaries first: a missing control plane is the likelier and more useful message
        find_binaries(with_controller_manager=True)
        crds = crd_paths()
    except ControlPlaneUnavailable as e:
        failure = str(e)
    if failure:
        pytest.fail(failure, pytrace=False)  # never skip: the suite must not pass vacuously
    workdir = tmp_path_factory.mktemp("controlplane")
    cp = ControlPlane(workdir, with_controller_manager=True, crds=crds)
    try:
        cp.start()
    except ControlPlaneError as e:
        failure = f"{e}\n(logs: {cp.logs_dir})"
        info.append(f"control plane failed to start; logs kept in {cp.logs_dir}")
    if failure:
        pytest.fail(failure, pytrace=False)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in cp.timings.items())
    info.append(f"control plane: {cp.server} started in {cp.startup_seconds:.2f}s ({timings})")
    try:
        yield cp
    finally:
        cp.stop()
        if pytestconfig.stash.get(_FAILED, False):
            info.append(f"control plane logs kept (a test failed): {cp.logs_dir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane):
    """``kubernetes.client.ApiClient`` authenticated as the admin (system:masters)."""
    client = control_plane.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(kube, control_plane: ControlPlane) -> Iterator[Callable[..., str]]:
    """Factory: ``namespace(labels=None, prefix="it")`` creates a unique namespace and returns its
    name; every namespace it created is deleted at teardown. Waits (bounded) for the namespace's
    `default` ServiceAccount, so pods can be created right away."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(kube)
    created: list[str] = []

    def make(labels: dict[str, str] | None = None, prefix: str = "it") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or None)))
        created.append(name)
        if control_plane.with_controller_manager:
            deadline = time.monotonic() + 15
            while True:
                try:
                    core.read_namespaced_service_account("default", name)
                    break
                except ApiException as e:
                    if e.status != 404 or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        return name

    yield make

    for name in created:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise
