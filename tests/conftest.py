"""Session-wide fixtures: a real mosquitto on a free loopback port, a topic root per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc, kill_strays

if TYPE_CHECKING:
    from tests.support.execution import Executors
    from tests.support.site import SiteBroker

REPO = Path(__file__).resolve().parent.parent
TEST_BROKER_CONFIG = REPO / "mosquitto" / "test.conf"


@pytest.fixture(scope="session", autouse=True)
def no_stray_steps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session, no workflow step of any test is left running."""
    yield
    kill_strays(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    """The session's shared broker. Tests that restart or kill a broker use
    ``private_broker`` instead."""
    process = MosquittoProcess(TEST_BROKER_CONFIG, tmp_path_factory.mktemp("mosquitto"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def site_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteBroker]:
    """A site's broker as ``edgeplane broker init`` writes it (TLS, dynamic security, no
    anonymous access) on free ports, run with ``mosquitto -c DIR/mosquitto.conf``. Its topic
    root is its own (the roles are made for it): tests keep apart by their own env ids.
    ``tests.support.site.DynsecAdmin(site_broker)`` adds clients and roles."""
    from tests.support.site import SiteBroker  # paho and cryptography: only when used

    root = TopicRoot(f"test/{uuid.uuid4().hex[:10]}/edgeplane/v1")
    process = SiteBroker.create(tmp_path_factory.mktemp("site") / "site", root)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    process = MosquittoProcess(TEST_BROKER_CONFIG, tmp_path / "mosquitto")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def root() -> TopicRoot:
    """A topic root of this test's own, so tests never see each other's retained state."""
    return TopicRoot(f"test/{uuid.uuid4().hex[:10]}/edgeplane/v1")


@pytest.fixture
async def procs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Proc]]:
    """Processes a test starts; killed at the end (with the workflow steps their agents
    left running), and their output printed on failure."""
    started: list[Proc] = []
    yield started
    for proc in started:
        await proc.close()
    kill_strays(tmp_path)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in started:
            print(f"\n===== output of {' '.join(proc.argv[2:])} =====\n{proc.output()[-6000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def executors(tmp_path: Path) -> Iterator[Executors]:
    """Agent executors over ``tmp_path`` (tests/support/execution.py), each closed at the end."""
    from tests.support.execution import Executors

    made = Executors(tmp_path)
    yield made
    for executor in made.made:
        executor.close(timeout=10)
