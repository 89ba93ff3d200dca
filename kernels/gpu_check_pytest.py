"""pytest plugin for gpu_check.sh's parity stage (`-p gpu_check_pytest`, kernels/ on PYTHONPATH):
time limits that need no pytest-timeout and end the run with its JUnit XML written.

GPUNN_TEST_TIMEOUT=S     a test phase (setup, call, teardown) still running after S seconds fails
                         with TestTimeLimit, raised in the main thread by SIGALRM; the run goes on.
                         (Code stuck inside one C call sees it only when that call returns; the
                         stage's faulthandler_timeout dumps the stacks of such a hang.)
GPUNN_STAGE_DEADLINE=T   (time.time() seconds) no test starts after T: the run stops as if
                         interrupted, so pytest still writes its summary and --junitxml file.
"""
from __future__ import annotations

import os
import signal
import time

import pytest


class TestTimeLimit(Exception):
    """A test phase ran over GPUNN_TEST_TIMEOUT."""

    __test__ = False  # not a test class


def _seconds(env: str) -> float:
    try:
        return float(os.environ.get(env, "") or 0)
    except ValueError:
        return 0.0


def _limited(item, phase):
    limit = _seconds("GPUNN_TEST_TIMEOUT")
    if limit <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def over(signum, frame):
        raise TestTimeLimit(f"{item.nodeid}: {phase} ran over its {limit:g} s limit (GPUNN_TEST_TIMEOUT)")

    old = signal.signal(signal.SIGALRM, over)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _limited(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _limited(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _limited(item, "teardown")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    deadline = _seconds("GPUNN_STAGE_DEADLINE")
    if deadline and time.time() > deadline:
        session = item.session
        left = len(session.items) - session.items.index(item) if item in session.items else "the remaining"
        session.shouldstop = f"gpu_check stage deadline reached: {left} tests not run"
        return True  # this test is not run; the loop then stops the session (summary and XML written)
    return None
