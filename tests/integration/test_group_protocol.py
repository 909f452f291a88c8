"""The two consumer group protocols (group.protocol): classic cooperative-sticky and
KIP-848 "consumer", against real brokers; the settings each refuses; the librdkafka the
worker names. Each test picks its protocol itself, so this file runs in the primary leg
of tests/run only (librdkafka 2.14, Kafka 4.4)."""

import datetime
import os
import re
import time
from pathlib import Path

import pytest

from harness import (Kafka, Topics, Worker, binary, final_by_id,
                     librdkafka_version, make_requests, make_tmpdir, run,
                     wait_for)

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools]

KIP848_LIBRDKAFKA = (2, 12, 0)


def _completed(r):
    return datetime.datetime.fromisoformat(r["completed_at"].replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def kafka39():
    """A Kafka 3.9.1 broker of this module: one without the KIP-848 protocol."""
    k = Kafka.start(make_tmpdir("kafka39"), version="3.9.1", local=True)
    try:
        k.wait_ready(60)
        yield k
    finally:
        k.stop()


def test_version_and_start_up_line_name_the_librdkafka_in_use(kafka, topics, smtp_sink,
                                                               worker):
    out = run([binary("kafka-mailer"), "--version"], timeout=30).stdout
    version = ".".join(str(x) for x in librdkafka_version())
    assert f"librdkafka {version}" in out
    sink = smtp_sink()
    w = worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off"))
    w.wait_log("worker started")
    line = next(ln for ln in w.log().splitlines() if "worker started" in ln)
    assert f"librdkafka={version}" in line
    assert re.search(r"group\.protocol=(classic|consumer)", line)


@pytest.mark.parametrize("key,value", [
    ("kafka.partition.assignment.strategy", "range"),
    ("kafka.session.timeout.ms", "6000"),
    ("kafka.consumer.heartbeat.interval.ms", "1000"),
])
def test_classic_only_settings_are_refused_under_kip848_with_the_reason(key, value):
    r = run([binary("kafka-mailer"), "-X", "group.protocol=consumer", "-X", f"{key}={value}",
             "--dump-config"], timeout=30)
    assert r.returncode == 1
    prop = key.replace("kafka.consumer.", "kafka.")
    assert f"{prop}: not allowed with group.protocol=consumer" in r.stderr, r.stderr


def test_kafka_group_protocol_is_refused_in_favour_of_group_protocol():
    r = run([binary("kafka-mailer"), "-X", "kafka.group.protocol=consumer",
             "--dump-config"], timeout=30)
    assert r.returncode == 1
    assert "set group.protocol instead" in r.stderr, r.stderr


def test_kip848_against_a_broker_without_it_stops_within_seconds_saying_why(
        kafka39, smtp_sink, worker):
    topics = Topics.new(partitions=2).create(kafka39)
    sink = smtp_sink()
    cfg = Worker.base_config(kafka39, topics, sink.url, smtp_starttls="off",
                             group_protocol="consumer")
    started = time.monotonic()
    # librdkafka leaks two queues at exit in this state (see the file); the full
    # unwinder lets the suppressions name where they were made.
    supp = Path(__file__).with_name("lsan-no-kip848.supp")
    asan = os.environ.get("ASAN_OPTIONS", "")
    w = worker(cfg, env={"LSAN_OPTIONS": f"suppressions={supp}:print_suppressions=0",
                         "ASAN_OPTIONS": f"{asan}:fast_unwind_on_malloc=0".lstrip(":")})
    rc = w.wait(30)
    took = time.monotonic() - started
    if librdkafka_version() < KIP848_LIBRDKAFKA:
        assert rc == 1
        assert "group.protocol=consumer needs librdkafka 2.12 or newer" in w.log()
        return
    assert rc == 2, w.log_tail()
    assert "the broker does not support group.protocol=consumer" in w.log(), w.log_tail()
    assert took < 15, f"took {took:.1f} s"


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_revoke_does_not_pause_commits(kafka, capture_server, worker, protocol):
    """A worker that gives partitions away goes on committing, and so on sending, at
    once: with inflight.max 40 a pause of its commits stops its sends within
    milliseconds, which shows as a gap in its results' completion times."""
    if protocol == "consumer" and librdkafka_version() < KIP848_LIBRDKAFKA:
        pytest.fail("the primary leg runs librdkafka 2.12 or newer")
    topics = Topics.new(partitions=4).create(kafka)
    server = capture_server(delay_data=0.05)  # 20 sessions: about 400 a second
    n = 4000
    cfg = Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                             group_protocol=protocol, inflight_max=40,
                             smtp_sessions_max=20, commit_interval_ms=1000)
    w1 = worker(cfg, {"worker.id": "w1"}, name="w1")
    w1.wait_log(f'partitions assigned" topic={topics.requests} count=4')
    kafka.produce(topics.requests, make_requests(n))
    wait_for(lambda: kafka.count(topics.results) >= 300, 60, "300 results", interval=0.1)
    worker(cfg, {"worker.id": "w2"}, name="w2")
    wait_for(lambda: re.search(r'partitions revoked" topic=' + re.escape(topics.requests),
                               w1.log()), 60, "w1 to give partitions away", interval=0.1)
    revoked_at = datetime.datetime.now(datetime.timezone.utc)
    assert kafka.count(topics.results) < n - 500, "the revoke happened under load"

    final = final_by_id(kafka.results(topics.results, wait=n, timeout=180))
    assert len(final) == n and {r["status"] for r in final.values()} == {"sent"}
    kafka.wait_committed(topics.group, topics.requests, timeout=60)
    mine = sorted(_completed(r) for r in final.values() if r["worker"] == "w1")
    after = [t for t in mine if t >= revoked_at - datetime.timedelta(seconds=1)]
    assert len(after) >= 2, "w1 went on sending after the revoke"
    gap = max((b - a).total_seconds() for a, b in zip(after, after[1:]))
    print(f"{protocol}: w1 sent {len(after)} after the revoke, longest gap {gap:.2f} s")
    assert gap < 3.0, f"w1 paused {gap:.1f} s after the revoke"
    assert "w2" in {r["worker"] for r in final.values()}
