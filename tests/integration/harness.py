"""Integration test harness: what the tests add to the local stack of tests/lib/kmstack.py
(real Kafka, real SMTP servers, the worker and its tools): the test broker settings, the
tools bound to a broker, unique topics, the worker's base settings, requests.

Everything here is bounded in time and every process it starts is tracked by pid and
stopped by pid (see kmstack's ``Proc`` and ``stop_all``), also when a test fails.

Environment (and kmstack's: KM_BUILD_DIR, KM_TEST_TMPDIR):
  KM_KAFKA_BOOTSTRAP  use this running broker instead of starting one
  KM_KAFKA_VERSION  the Kafka the tests start (deploy/local/kafka-start; default 4.4.0)
  KM_GROUP_PROTOCOL the workers' group.protocol (classic or consumer; default: the
                    worker's own default, classic)
  KM_KEEP_TMP=1     keep the per-session folder after the run (it is printed)
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import kmstack  # noqa: E402
from kmstack import (REPO, TOOL_TIMEOUT, CaptureServer, PostfixServer, SmtpSink,  # noqa: E402
                     binary, build_dir, existing_run_root, free_port, have_binary, make_tmpdir,
                     port_open, remove_run_root, run, run_root, stop_all, wait_for)

# The tests' names: the stack's, re-exported, and this module's own.
__all__ = ["REPO", "CaptureServer", "PostfixServer", "SmtpSink", "binary", "build_dir",
           "existing_run_root", "free_port", "have_binary", "make_tmpdir",
           "remove_run_root", "run", "run_root", "stop_all", "wait_for",
           "KAFKA_VERSION", "GROUP_PROTOCOL", "FAST_GROUP_CLASSIC", "broker_props",
           "librdkafka_version", "fast_group", "parse_logfmt", "unique", "Kafka",
           "Topics", "worker_knows", "Worker", "make_request", "make_requests",
           "captured_mids", "unknown_outcomes", "final_by_id", "Supervisor"]

KAFKA_VERSION = os.environ.get("KM_KAFKA_VERSION") or "4.4.0"
GROUP_PROTOCOL = os.environ.get("KM_GROUP_PROTOCOL") or ""

# KIP-848 group timing is the broker's (Kafka 4): a 1 s heartbeat, so that a member
# learns of a new assignment within a second (the default, 5 s, is what production
# brokers run and what docs/operations.md describes), and a 6 s session, as the classic
# tests ask for with FAST_GROUP_CLASSIC.
KAFKA4_TEST_PROPS = ("group.consumer.heartbeat.interval.ms=1000",
                     "group.consumer.min.heartbeat.interval.ms=1000",
                     "group.consumer.session.timeout.ms=6000",
                     "group.consumer.min.session.timeout.ms=6000")
# Quick classic group membership for the fault tests: a worker killed with -9 holds its
# partitions until its session times out; 6 s is the broker's minimum.
FAST_GROUP_CLASSIC = {"kafka_consumer_session_timeout_ms": 6000,
                      "kafka_consumer_heartbeat_interval_ms": 1000}


def broker_props(version: str) -> tuple:
    """The test broker settings (KEY=VALUE) for Kafka @version."""
    return () if version.startswith("3.") else KAFKA4_TEST_PROPS


_librdkafka: Optional[tuple] = None


def librdkafka_version() -> tuple:
    """The librdkafka the worker runs, from `kafka-mailer --version`, as (2, 14, 2)."""
    global _librdkafka
    if _librdkafka is None:
        out = run([binary("kafka-mailer"), "--version"], timeout=30).stdout
        m = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", out)
        assert m, f"no librdkafka version in: {out!r}"
        _librdkafka = tuple(int(x) for x in m.groups())
    return _librdkafka


def fast_group() -> dict:
    """Worker settings (base_config keywords) for quick group membership: the classic
    protocol's session and heartbeat, which KIP-848 takes from the broker instead."""
    return {} if GROUP_PROTOCOL == "consumer" else dict(FAST_GROUP_CLASSIC)


_LOGFMT_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def parse_logfmt(line: str) -> dict:
    """One logfmt line -> {key: value}, strictly: pairs key=value separated by one
    space; a value bare (no space, '"', '=' or backslash) or in double quotes with
    only \\" and \\\\ escaped; no control characters; no key twice. Raises
    ValueError."""
    out, i, n = {}, 0, len(line)
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in line):
        raise ValueError("control character")
    while i < n:
        m = _LOGFMT_KEY.match(line, i)
        if not m or m.end() >= n or line[m.end()] != "=":
            raise ValueError(f"no key= at column {i}")
        key, i = m.group(), m.end() + 1
        if key in out:
            raise ValueError(f"{key} twice")
        if i < n and line[i] == '"':
            i += 1
            val = []
            while True:
                if i >= n:
                    raise ValueError(f"{key}: unclosed quote")
                c = line[i]
                if c == "\\":
                    if i + 1 >= n or line[i + 1] not in '"\\':
                        raise ValueError(f"{key}: bad escape")
                    val.append(line[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    val.append(c)
                    i += 1
            out[key] = "".join(val)
        else:
            j = line.find(" ", i)
            j = n if j < 0 else j
            val = line[i:j]
            if not val or any(c in val for c in '"=\\'):
                raise ValueError(f"{key}: bad bare value {val!r}")
            out[key], i = val, j
        if i < n:
            if line[i] != " " or i + 1 >= n:
                raise ValueError(f"no single space after {key} at column {i}")
            i += 1
    return out


def unique(prefix: str) -> str:
    """A name no other test uses: PREFIX-<12 hex>."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- Kafka -----------------------------------------------------------------------------

class Kafka(kmstack.Kafka):
    """A single-node Apache Kafka started with deploy/local/kafka-start (or an existing
    broker from KM_KAFKA_BOOTSTRAP), with the tools bound to it."""

    @classmethod
    def start(cls, dir: Optional[Path] = None, version: Optional[str] = None,
              local: bool = False, props: Sequence[str] = (), sasl_ssl: bool = False,
              scram_users: Sequence[str] = ()) -> "Kafka":
        """A broker of @version (default KM_KAFKA_VERSION) with the test broker settings
        and then @props (KEY=VALUE, later ones win); KM_KAFKA_BOOTSTRAP's instead unless
        @local (a test that stops its broker, or needs settings of its own, needs its
        own) or @sasl_ssl (kmstack.Kafka.start)."""
        external = os.environ.get("KM_KAFKA_BOOTSTRAP")
        if external and not local and not sasl_ssl:
            return cls(external)
        version = version or KAFKA_VERSION
        return super().start(dir or make_tmpdir("kafka"), version,
                             broker_props(version) + tuple(props), sasl_ssl=sasl_ssl,
                             scram_users=scram_users)

    # thin wrappers around the C tools, bound to this broker
    def admin(self, *args, timeout: float = TOOL_TIMEOUT, check: bool = False):
        return run([binary("mailer-admin"), "-b", self.bootstrap, *self.tool_args,
                    *args], timeout=timeout, check=check)

    def wait_ready(self, timeout: float = 60) -> None:
        if have_binary("mailer-admin"):
            self.admin("wait-ready", "--timeout", str(int(timeout)),
                       timeout=timeout + 10, check=True)
        else:
            wait_for(lambda: port_open(self.port), timeout, f"Kafka port {self.port}")

    def create_topics(self, *specs: str) -> None:
        """Creates topics given as NAME:PARTITIONS (replication 1); waits for leaders."""
        self.admin("create-topics", *specs, timeout=90, check=True)

    def count(self, topic: str) -> int:
        r = self.admin("count", topic, check=True)
        return int(r.stdout.split()[-1])

    def offsets(self, group: str, topic: str) -> subprocess.CompletedProcess:
        """mailer-admin offsets: returncode 0 when every partition's committed offset
        is its end offset (3 when some lag)."""
        return self.admin("offsets", group, topic)

    def fully_committed(self, group: str, topic: str) -> bool:
        return self.offsets(group, topic).returncode == 0

    def wait_committed(self, group: str, topic: str, timeout: float = 60) -> None:
        wait_for(lambda: self.fully_committed(group, topic), timeout,
                 f"group {group} to commit all of {topic}", interval=0.5)

    def produce(self, topic: str, requests: Iterable, *extra: str,
                timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess:
        """Publishes requests (dicts, JSON strings or bytes), one per line."""
        lines = []
        for r in requests:
            if isinstance(r, bytes):
                lines.append(r)
            elif isinstance(r, str):
                lines.append(r.encode())
            else:
                lines.append(json.dumps(r).encode())
        data = b"\n".join(lines) + b"\n"
        return run([binary("mailer-produce"), "-b", self.bootstrap, *self.tool_args,
                    "-t", topic, *extra],
                   input=data, timeout=timeout, check=True)

    def results(self, topic: str, wait: Optional[int] = None, timeout: float = 60,
                check: bool = True) -> list:
        """Reads the results topic with mailer-results; returns the parsed JSON lines.
        With wait=N, reads until N distinct ids have a final result (bounded)."""
        args = [binary("mailer-results"), "-b", self.bootstrap, *self.tool_args,
                "-t", topic]
        if wait is not None:
            args += ["--wait", str(wait)]
        args += ["--timeout", str(int(timeout))]
        r = run(args, timeout=timeout + 30, check=check)
        out = []
        for line in r.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def audit(self, topics: "Topics", capture_dir: Optional[Path] = None,
              timeout: float = 60) -> dict:
        """mailer-audit --json: joins topics.requests with topics.results (and the
        capture-server folder) and returns its numbers, with "rc" (0: nothing lost,
        4: something lost)."""
        args = [binary("mailer-audit"), "-b", self.bootstrap, *self.tool_args,
                "--requests", topics.requests, "--results", topics.results, "--json",
                "--timeout", str(int(timeout))]
        if capture_dir is not None:
            args += ["--capture-dir", capture_dir]
        r = run(args, timeout=timeout + 30)
        if r.returncode not in (0, 4):
            raise AssertionError(f"mailer-audit exited {r.returncode}: {r.stderr[-2000:]}")
        out = json.loads(r.stdout)
        out["rc"] = r.returncode
        return out

    def wait_audit(self, topics: "Topics", n: int, capture_dir: Optional[Path] = None,
                   timeout: float = 60) -> dict:
        """Polls the audit until the requests topic holds n requests and none is lost
        (bounded); returns the last audit."""
        last: dict = {}

        def done():
            nonlocal last
            last = self.audit(topics, capture_dir)
            return last if last["requests"] >= n and last["lost"] == 0 else None
        try:
            return wait_for(done, timeout, f"{n} requests with a final result",
                            interval=1.0)
        except TimeoutError as e:
            summary = {k: last.get(k) for k in ("requests", "final", "lost", "lost_list",
                                                "results", "status")}
            raise TimeoutError(f"{e}; last audit: {summary}") from None

    def results_summary(self, topic: str, timeout: float = 60) -> str:
        return run([binary("mailer-results"), "-b", self.bootstrap, *self.tool_args,
                    "-t", topic,
                    "--summary", "--timeout", str(int(timeout))],
                   timeout=timeout + 30, check=True).stdout


@dataclass
class Topics:
    """Unique topic and group names for one test."""
    requests: str
    results: str
    deadletter: str
    retry: str
    group: str
    partitions: int

    @classmethod
    def new(cls, partitions: int = 4) -> "Topics":
        tag = uuid.uuid4().hex[:12]
        return cls(requests=f"req-{tag}", results=f"res-{tag}", deadletter=f"dlq-{tag}",
                   retry=f"retry-{tag}", group=f"group-{tag}", partitions=partitions)

    def create(self, kafka: Kafka) -> "Topics":
        kafka.create_topics(f"{self.requests}:{self.partitions}",
                            f"{self.results}:{self.partitions}",
                            f"{self.deadletter}:1", f"{self.retry}:{self.partitions}")
        return self


# --- the worker --------------------------------------------------------------------------

_worker_help: Optional[str] = None


def worker_knows(key: str) -> bool:
    """True when `kafka-mailer --help` lists the setting key (so tests can run against a
    worker built before the setting existed)."""
    global _worker_help
    if _worker_help is None:
        if not have_binary("kafka-mailer"):
            return False
        _worker_help = run([binary("kafka-mailer"), "--help"], timeout=30).stdout
    return f"  {key} (" in _worker_help


class Worker(kmstack.Worker):
    """A kafka-mailer process (kmstack.Worker) with the tests' base settings."""

    @staticmethod
    def base_config(kafka: Kafka, topics: Topics, smtp_url: str, **more) -> dict:
        """The settings every test needs; keyword arguments use '_' for '.'
        (smtp_starttls="off" -> smtp.starttls=off)."""
        cfg = {
            "kafka.bootstrap.servers": kafka.bootstrap,
            "kafka.group.id": topics.group,
            "topic.requests": topics.requests,
            "topic.results": topics.results,
            "topic.deadletter": topics.deadletter,
            "smtp.url": smtp_url,
        }
        if GROUP_PROTOCOL:
            cfg["group.protocol"] = GROUP_PROTOCOL
        if worker_knows("topic.retry"):
            # the default topic (email.retry) would be shared between tests
            cfg["topic.retry"] = topics.retry
        for k, v in more.items():
            cfg[k.replace("_", ".")] = v
        return cfg



# --- requests ----------------------------------------------------------------------------

def make_request(i: int = 0, *, id: Optional[str] = None, to: Optional[list] = None,
                 **fields) -> dict:
    """A valid v1 request; keyword arguments override or add fields."""
    rid = id or f"req-{uuid.uuid4().hex}"
    req = {
        "id": rid,
        "from": "Shop <no-reply@shop.example>",
        "to": to if to is not None else [f"user{i}@example.com"],
        "subject": f"Test message {i}",
        "text": f"Hello {i}\nThis is a test.\n",
    }
    req.update(fields)
    return req


def make_requests(n: int, **fields) -> list:
    return [make_request(i, **fields) for i in range(n)]


def captured_mids(folder) -> "collections.Counter":
    """Message-ID -> how many times deploy/local/capture-server stored it in @folder."""
    out: collections.Counter = collections.Counter()
    for eml in Path(folder).glob("[0-9]*.eml"):
        with open(eml, "rb") as f:
            for line in f:
                if line in (b"\r\n", b"\n"):
                    break
                if line.lower().startswith(b"message-id:"):
                    out[line.split(b":", 1)[1].strip().decode()] += 1
                    break
    return out


def unknown_outcomes(kafka: "Kafka", topic_results: str, capture_dir) -> set:
    """Message-IDs the capture server accepted that have no "sent" result on the
    results topic: the sends whose outcome a crash at this moment loses. Read it while
    the workers are frozen (SIGSTOP), so that neither side moves."""
    published = {r.get("message_id") for r in kafka.results(topic_results, timeout=30)
                 if r.get("status") == "sent"}
    return set(captured_mids(capture_dir)) - published


def final_by_id(results: Iterable[dict]) -> dict:
    """id -> the last result seen for it."""
    out = {}
    for r in results:
        out[r.get("id")] = r
    return out


class Supervisor:
    """Starts @worker anew when it exits with one of @statuses, as systemd's
    Restart=on-failure or Kubernetes would (kafka-mailer exits with 3 when its Kafka
    client is stuck, commit.stall.exit.ms), @max_restarts times at most; a thread polls
    every @interval s until stop(). .restarts lists the statuses it restarted after."""

    def __init__(self, worker, statuses=(3,), max_restarts=3, interval=0.5):
        self.worker, self.statuses, self.max_restarts = worker, statuses, max_restarts
        self.interval = interval
        self.restarts: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            w = self.worker
            rc = w.proc.returncode if w.proc is not None else None
            if rc in self.statuses and len(self.restarts) < self.max_restarts:
                print(f"supervisor: {w.name} exited {rc}: started anew", flush=True)
                w.start()
                # counted once started: a test that waits for .restarts then
                # finds the new process in worker.proc, not the one that exited
                self.restarts.append(rc)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)


def ready_kafka(k):
    """A fixture body: waits for the started broker @k, yields it, stops it at the end."""
    try:
        k.wait_ready(60)
        yield k
    finally:
        k.stop()
