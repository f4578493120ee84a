"""Fixtures of the live-stack tests: the whole scaling chain, started once per session.

These tests run through ``bash tests/e2e/run.sh`` (``tests/run.sh`` calls it), which puts them in a private
network namespace. Run any other way, they FAIL with that instruction; they never skip. Logs of every
component are kept under ``${LLMAZ_SERVERLESS_CACHE:-~/.cache/llmaz-serverless}/e2e-logs/<run>`` when a test
fails, and removed when all pass.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.controlplane import ControlPlaneError, ControlPlaneUnavailable, cache_dir

from .stack import LiveStack, in_private_netns

_HERE = Path(__file__).resolve().parent
_FAILED = pytest.StashKey[bool]()
_INFO = pytest.StashKey[list]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    if outcome.get_result().failed:
        item.config.stash[_FAILED] = True


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    for line in config.stash.get(_INFO, []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def stack(pytestconfig: pytest.Config) -> Iterator[LiveStack]:
    info = pytestconfig.stash.setdefault(_INFO, [])
    if not in_private_netns():
        pytest.fail("the live-stack tests run inside a private network namespace: run them with "
                    "`bash tests/e2e/run.sh` (tests/run.sh does)", pytrace=False)
    workdir = cache_dir() / "e2e-logs" / time.strftime("%Y%m%d-%H%M%S")
    failure = None
    try:
        live = LiveStack(workdir)
        live.start()
    except (ControlPlaneUnavailable, ControlPlaneError) as e:
        failure = f"{e}\n(logs: {workdir})"
    if failure:
        info.append(f"live stack failed to start; logs kept in {workdir}")
        pytest.fail(failure, pytrace=False)
    info.append(live.describe())
    try:
        yield live
    finally:
        live.stop()
        if pytestconfig.stash.get(_FAILED, False):
            info.append(f"live stack logs kept (a test failed): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
