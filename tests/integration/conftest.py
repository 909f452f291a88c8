"""pytest fixtures for the integration tests (see harness.py for the pieces).

Run with Debian's interpreter, which has python3-aiosmtpd:
    KM_BUILD_DIR=build /usr/bin/python3 -m pytest -q tests/integration
"""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import harness  # noqa: E402
from harness import (CaptureServer, Kafka, PostfixServer, SmtpSink, Topics,  # noqa: E402,F401
                     Worker, have_binary, make_tmpdir, parse_logfmt, ready_kafka)


def _sigterm_to_interrupt(signum, frame):
    # A SIGTERM (e.g. from `timeout` in tests/run) becomes KeyboardInterrupt, so pytest
    # still runs the fixtures' teardown and every child is stopped by pid.
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "needs_worker: needs the kafka-mailer binary")
    config.addinivalue_line("markers", "needs_tools: needs the mailer-* tools")
    config.addinivalue_line("markers", "long: minutes long; runs only in tests/run --long "
                            "(KM_LONG_TESTS=1)")


def pytest_collection_modifyitems(config, items):
    # The long mode's tests run when tests/run --long asks for them (KM_LONG_TESTS=1),
    # and then only they do.
    long_mode = os.environ.get("KM_LONG_TESTS") == "1"
    keep = [i for i in items if ("long" in i.keywords) == long_mode]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    # A missing binary is a failure, never a skip: tests/run builds them all.
    needed = set()
    for item in items:
        if "needs_worker" in item.keywords:
            needed.add("kafka-mailer")
        if "needs_tools" in item.keywords:
            needed.update(("mailer-produce", "mailer-results", "mailer-admin",
                           "mailer-audit"))
    missing = sorted(n for n in needed if not have_binary(n))
    if missing:
        raise pytest.UsageError(f"not built in {harness.build_dir()}: {', '.join(missing)}")


@pytest.fixture(scope="session")
def session_dir():
    """The run's folder (Kafka's data and logs, every server's and worker's logs)."""
    return harness.run_root()


@pytest.fixture(scope="session")
def kafka(session_dir):
    """A real single-node Kafka (KM_KAFKA_VERSION, default 4.4.0) for the whole session
    (.bootstrap)."""
    yield from ready_kafka(Kafka.start(session_dir / "kafka"))


@pytest.fixture
def topics(kafka):
    """Unique, created topics and group for one test (4 partitions)."""
    return Topics.new(partitions=4).create(kafka)


@pytest.fixture
def tmpdir_fast():
    """A per-test folder under the run's folder (on tmpfs when available)."""
    return make_tmpdir("t")


def _started_by(start_fn):
    """A fixture body: yields a factory that starts servers with start_fn(**kw) and
    stops every one it started at the end of the test, also on failure."""
    started = []

    def start(*args, **kw):
        s = start_fn(*args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def capture_server():
    """Factory: capture_server(tls=..., auth="u:p", ...) -> CaptureServer; all stopped at
    the end of the test."""
    yield from _started_by(CaptureServer.start)


@pytest.fixture
def postfix():
    """Factory: postfix(relay_port=P, refuse_domains=[...]) -> PostfixServer, a private
    Postfix instance relaying to 127.0.0.1:P; all stopped at the end of the test."""
    yield from _started_by(PostfixServer.start)


@pytest.fixture
def smtp_sink():
    """Factory: smtp_sink(extra=["-W", ".:1"]) -> SmtpSink; all stopped at the end."""
    yield from _started_by(lambda extra=(): SmtpSink.start(extra=extra))


@pytest.fixture
def worker(request):
    """Factory: worker(config, overrides=None, ...) -> a started Worker; every worker is
    stopped (SIGTERM, bounded wait, then SIGKILL) at the end, and a failing test gets the
    tail of each worker's log in its report."""
    started = []
    request.node._km_workers = started

    def start(config, overrides=None, **kw):
        w = Worker(config, overrides, **kw).start()
        started.append(w)
        return w

    yield start
    for w in started:
        if w.alive():
            w.stop(timeout=30)
    # On a sanitizer build a leak (LeakSanitizer, at exit), a memory error or
    # undefined behaviour is reported in the worker's log; the exit status alone
    # is not checked by every test, so the reports fail the test here.
    found = []
    for w in started:
        for line in w.all_logs().splitlines():
            if any(m in line for m in SANITIZER_MARKERS):
                found.append(f"{w.name}: {line.strip()}")
                break
    if found:
        pytest.fail("sanitizer report in a worker log:\n" + "\n".join(found),
                    pytrace=False)
    # Every line a worker writes is logfmt (ts, level, msg first), but for the one
    # line of a configuration error given before logging starts.
    bad = []
    for w in started:
        for line in (line for run in w.run_logs() for line in run.splitlines()):
            if line.startswith("kafka-mailer: ") and "level=" not in line:
                continue
            try:
                f = parse_logfmt(line)
                assert list(f)[:3] == ["ts", "level", "msg"], list(f)[:3]
            except (ValueError, AssertionError) as e:
                bad.append(f"{w.name}: {e}: {line[:300]!r}")
                break
    if bad:
        pytest.fail("a worker log line that is not logfmt:\n" + "\n".join(bad),
                    pytrace=False)


SANITIZER_MARKERS = ("ERROR: LeakSanitizer", "ERROR: AddressSanitizer",
                     "runtime error:")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.when == "call" and rep.failed:
        for w in getattr(item, "_km_workers", []):
            rep.sections.append((f"{w.name} log tail", w.log_tail(80)))
            earlier = notable_lines(w.run_logs()[:-1])
            if earlier:
                rep.sections.append((f"{w.name} earlier runs: warnings, revokes, stops",
                                     earlier))
        # the broker's side of a failure (a local broker: its log is here)
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Kafka) and value.dir is not None:
                rep.sections.append((f"broker ({name}) log tail", value.log_tail(60)))


NOTABLE = ("level=warn", "level=error", 'msg="partitions revoked"', 'msg="stopping',
           "msg=stopped", 'msg="moved to the retry topic before release"')


def notable_lines(logs, n=80) -> str:
    """The last @n lines of earlier runs' logs that a failure in a group change is read
    from (a restarted worker's report shows only its last run's tail)."""
    lines = [f"[run {i + 1}] {ln}" for i, log in enumerate(logs)
             for ln in log.splitlines() if any(k in ln for k in NOTABLE)]
    return "\n".join(lines[-n:])


def pytest_sessionfinish(session, exitstatus):
    harness.stop_all()
    root = harness.existing_run_root()
    if root is None:
        return
    if exitstatus in (0, 5) and os.environ.get("KM_KEEP_TMP") != "1":
        harness.remove_run_root()
    else:
        print(f"\nharness: logs and data kept in {root}", file=sys.stderr)
