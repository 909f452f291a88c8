"""Fault tests: the delivery guarantees (docs/operations.md) under the faults production
brings, against the real broker, real SMTP servers and the real worker.

The oracle is mailer-audit (Kafka.audit / wait_audit): every request message must have a
final result whose source is its exact location (0 lost). Duplicate sends are counted
from the capture server's folder (a Message-ID captured more than once).

A test that stops the broker uses a module-scoped broker of its own, so the session's
broker, which the other tests share, is never stopped. Every wait is bounded.
"""

import collections
import datetime
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from harness import (CaptureServer, Kafka, SmtpSink, Supervisor, Topics, Worker,
                     captured_mids, fast_group, final_by_id, make_request, make_requests,
                     make_tmpdir, parse_logfmt, ready_kafka, wait_for, worker_knows)

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools, pytest.mark.slow]

def cfg(kafka, topics, url, **more):
    """base_config + plain SMTP + quick group membership (harness.fast_group)."""
    kw = fast_group()
    kw.update(more)
    return Worker.base_config(kafka, topics, url, smtp_starttls="off", **kw)


def needs_retry_topic():
    """The retry-topic and dedupe tests need a worker that has topic.retry."""
    assert worker_knows("topic.retry"), (
        "this worker has no topic.retry setting (retry topic / dedupe not built yet)")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SilentServer:
    """Accepts TCP connections on 127.0.0.1:port and never says anything."""

    def __init__(self, port=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.conns = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(c)
            self.accepted += 1

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()


@pytest.fixture(scope="module")
def own_kafka():
    """A broker for this module only (tests here may stop and restart it). Always a
    local one, even when KM_KAFKA_BOOTSTRAP names an external broker."""
    yield from ready_kafka(Kafka.start(make_tmpdir("kafka-faults"), local=True))


@pytest.fixture
def broker_with():
    """Factory: broker_with(tag, *props) -> a local broker of the test's own with @props
    in its server.properties (a broker set up to misbehave), stopped at the test's end
    (after its workers, when the test asks for this fixture before `worker`)."""
    gens = []

    def start(tag, *props):
        gens.append(ready_kafka(Kafka.start(make_tmpdir(tag), local=True,
                                            props=list(props))))
        return next(gens[-1])
    yield start
    for g in gens:
        next(g, None)


@pytest.fixture
def servers():
    """Stops every SMTP server (capture, sink, silent) a test started, also on failure."""
    started = []
    yield started
    for s in started:
        try:
            s.stop()
        except Exception as e:  # keep going
            print(f"stopping {s}: {e}")


def start_capture(servers, **kw):
    s = CaptureServer.start(**kw)
    servers.append(s)
    return s


def start_sink(servers, **kw):
    s = SmtpSink.start(**kw)
    servers.append(s)
    return s


def start_silent(servers, port=None):
    s = SilentServer(port)
    servers.append(s)
    return s


def heal_and_audit(kafka, topics, servers, bad, port, n):
    """Replaces the server @bad by a healthy capture server on the same @port, waits
    until every one of the @n requests was sent at least once, and returns the final
    results by id."""
    servers.remove(bad)
    bad.stop()
    healthy = start_capture(servers, port=port)
    a = kafka.wait_audit(topics, n, capture_dir=healthy.dir, timeout=60)
    assert_all_sent_once_or_more(a, n)
    return final_by_id(kafka.results(topics.results, timeout=30))


def assert_all_sent_once_or_more(a, n):
    """Audit a: n requests, 0 lost, all sent, every sent Message-ID captured."""
    assert a["requests"] == n
    assert a["lost"] == 0, a["lost_list"]
    assert a["status"]["sent"] == n, a["status"]
    assert a["orphans"] == 0
    assert a["capture"]["sent_not_captured"] == 0, a["capture"]["sent_not_captured_list"]
    assert a["capture"]["message_ids"] == n


# --- Kafka unavailable (crashes and group changes: test_group_changes.py) --------------

def test_broker_stopped_for_20s_under_load_loses_nothing(own_kafka, capture_server, worker):
    kafka = own_kafka
    topics = Topics.new(partitions=4).create(kafka)
    server = capture_server(delay_data=0.05)
    n = 1500
    kafka.produce(topics.requests, make_requests(n))
    # commit.stall.exit.ms: a Kafka client stuck after the outage (seen: librdkafka 2.14
    # waiting for its group coordinator for minutes) ends the worker with status 3, and
    # the supervisor starts it anew, as systemd or Kubernetes would
    w = worker(cfg(kafka, topics, server.url, inflight_max=100, smtp_sessions_max=10,
                   commit_stall_exit_ms=30000))
    sup = Supervisor(w)
    wait_for(lambda: kafka.count(topics.results) >= 200, 60, "200 results", interval=0.2)

    kafka.stop()
    assert kafka.pid is None
    down_at = time.monotonic()
    captured_at_stop = server.count()
    time.sleep(20)
    assert w.alive(), w.log_tail()
    # In-flight sends went on while Kafka was away.
    captured_while_down = server.count() - captured_at_stop
    r = kafka.restart()
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"broker down {time.monotonic() - down_at:.1f}s; "
          f"{captured_while_down} sends completed meanwhile")
    kafka.wait_ready(60)

    a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=180)
    assert_all_sent_once_or_more(a, n)
    kafka.wait_committed(topics.group, topics.requests, timeout=60)
    sup.stop()
    print(f"worker started anew after exit statuses {sup.restarts}")
    assert w.alive(), w.log_tail()
    # log.repeat.ms (10 s): librdkafka 2.14 reports the outage several times a second
    # (2.0.2 about once); each client (two consumers, one producer) wrote each error
    # code at most once in ten seconds, each line saying how many like it were not
    # written since the last. The lines do not name the consumer: two lines of an
    # error code of the consumers within 10 s may come, never three.
    lines = [parse_logfmt(x) for x in w.log().splitlines()]
    errors = [f for f in lines if f["msg"] in ("consumer error", "results producer error")]
    assert errors and all(f["repeated"].isdigit() for f in errors), errors
    by_code = collections.defaultdict(list)
    for f in errors:
        by_code[(f["msg"], f["err"])].append(
            datetime.datetime.strptime(f["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp())
    for (msg, err), ts in by_code.items():
        clients = 2 if msg == "consumer error" else 1
        for i in range(clients, len(ts)):
            assert ts[i] - ts[i - clients] >= 9.9, (msg, err, ts)


def test_commits_never_stored_while_kafka_answers_stop_the_worker_with_status_3(
        broker_with, capture_server, worker):
    """commit.stall.exit.ms: a broker that answers everything but stores no commit of
    the worker (offset.metadata.max.bytes=8: the worker's commit metadata, "kafka-mailer/1
    results=...", is longer), as a Kafka client stuck after an outage sees it. After
    commit.stall.exit.ms of that, the worker says so, stops as on SIGTERM and exits with
    status 3, having lost nothing and sent nothing twice. With commit.stall.exit.ms=0 a
    worker started after it keeps running (it sends the requests again: no commit was
    ever stored here, so it has no results floor to read from)."""
    kafka = broker_with("kafka-nocommit", "offset.metadata.max.bytes=8")
    topics = Topics.new(partitions=2).create(kafka)
    server = capture_server()
    n = 200
    kafka.produce(topics.requests, make_requests(n))
    w = worker(cfg(kafka, topics, server.url, commit_stall_exit_ms=4000))
    rc = w.wait(90)
    assert rc == 3, w.log_tail()
    lines = [parse_logfmt(x) for x in w.log().splitlines()]
    stuck = [f for f in lines if f["msg"].startswith(
        "offsets not committed for commit.stall.exit.ms (4000 ms) while Kafka answers")]
    assert stuck and stuck[0]["level"] == "error", w.log_tail()
    # What the broker said, once, in words an operator can act on.
    told = [f for f in lines if f["msg"].startswith(
        "Kafka refuses the offset commit metadata as too large")]
    assert len(told) == 1 and told[0]["level"] == "error", w.log_tail()
    assert "offset.metadata.max.bytes must be at least 64" in told[0]["msg"]
    assert any(f["msg"] == "stopped" for f in lines), w.log_tail()
    a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=60)
    assert a["lost"] == 0 and a["final"] == n, a
    assert max(captured_mids(server.dir).values()) == 1

    w2 = worker(cfg(kafka, topics, server.url, commit_stall_exit_ms=0))
    wait_for(lambda: sum(captured_mids(server.dir).values()) >= 2 * n, 60,
             "the requests sent again")
    time.sleep(8)
    assert w2.alive(), w2.log_tail()
    assert "offsets not committed for commit.stall.exit.ms" not in w2.log()


def test_a_worker_restarted_after_commit_stall_sends_nothing_it_finished_again(
        broker_with, capture_server, worker):
    """commit.stall.exit.ms with a results floor: a broker that stores the worker's first
    commits and refuses the later ones while answering everything else
    (offset.metadata.max.bytes=27: the metadata "kafka-mailer/1 results=0@<offset>" fits
    while the results offset has two digits). The worker exits with status 3, its
    supervisor starts it anew, and the new process reads the results topic from the
    floor of the last stored commit: the requests finished after that commit are
    answered as repeats, none reaches the relay twice, none is lost."""
    meta_max = len("kafka-mailer/1 results=0@") + 2
    kafka = broker_with("kafka-latecommit", f"offset.metadata.max.bytes={meta_max}")
    sup = None
    try:
        topics = Topics.new(partitions=1).create(kafka)
        server = capture_server()
        first, n = 60, 160
        kafka.produce(topics.requests, [make_request(i) for i in range(first)])
        w = worker(cfg(kafka, topics, server.url, commit_stall_exit_ms=3000))
        sup = Supervisor(w, max_restarts=1)
        # Results 0..59: the commits carry a floor below 100 and are stored.
        kafka.wait_committed(topics.group, topics.requests, timeout=60)
        # Results 60..159: once the floor reaches 100 no commit is stored.
        kafka.produce(topics.requests, [make_request(i) for i in range(first, n)])
        wait_for(lambda: sup.restarts, 90, "the worker to exit 3 and be started anew")
        assert sup.restarts == [3], w.all_logs()[-4000:]
        runs = w.run_logs()
        assert "offsets not committed for commit.stall.exit.ms (3000 ms)" in runs[0]
        # The new process: results read from the floor, what was finished not sent.
        wait_for(lambda: w.proc.returncode is not None, 90,
                 "the restarted worker to stop (its commits are refused too)")
        again = [parse_logfmt(x) for x in w.run_logs()[1].splitlines()]
        read = [f for f in again if f["msg"] == "results read at assignment"
                and f.get("topic") == topics.requests]
        assert read and int(read[0]["final_ids"]) >= 1, w.run_logs()[1][-4000:]
        # The floor came from the stored commit.
        assert int(read[0]["with_results_offset"]) == 1, w.run_logs()[1][-4000:]
        stopped = [f for f in again if f["msg"] == "stopped"]
        assert stopped and int(stopped[0]["duplicates"]) >= 1, w.run_logs()[1][-4000:]
        assert int(stopped[0]["sent"]) == 0, w.run_logs()[1][-4000:]
        a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=60)
        assert a["lost"] == 0 and a["final"] == n, a
        mids = captured_mids(server.dir)
        assert len(mids) == n and max(mids.values()) == 1, mids.most_common(3)
    finally:
        if sup:
            sup.stop()


class ProduceHoldingProxy:
    """A TCP proxy in front of a broker (which advertises the proxy's address, so every
    client connection goes through it) that can hold every Produce request on the
    connections open at one moment (hold_open_connections()) or on every connection
    (hold_all()): they never reach the broker and are never answered, while everything
    else works, and the Produce requests of the test's own tools pass. So a
    producer looks stuck on its connections (no delivery report for ever) while Kafka
    answers the rest of the worker, as a results producer stuck after an outage did.
    Every thread and socket is bounded by timeouts and stopped by stop()."""

    PRODUCE = 0

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.target = None  # the broker's port, set once it runs
        self.lock = threading.Lock()
        self.conns = []  # [client socket, broker socket, {"hold": bool}]
        self.held = 0
        self.hold_new = False  # connections opened from now on hold too
        self.running = True
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def hold_open_connections(self):
        with self.lock:
            for c in self.conns:
                c[2]["hold"] = True

    def hold_all(self):
        """Every Produce request from now on, on every connection (new ones too)."""
        with self.lock:
            self.hold_new = True
            for c in self.conns:
                c[2]["hold"] = True

    def release(self):
        """Produce requests pass again (those held stay unanswered)."""
        with self.lock:
            self.hold_new = False
            for c in self.conns:
                c[2]["hold"] = False

    def _accept(self):
        while self.running:
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.target is None:
                client.close()
                continue
            try:
                broker = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            for x in (client, broker):
                x.settimeout(0.5)
            with self.lock:
                state = {"hold": self.hold_new}
                self.conns.append([client, broker, state])
            for fn, args in ((self._requests, (client, broker, state)),
                             (self._pump, (broker, client))):
                t = threading.Thread(target=fn, args=args, daemon=True)
                t.start()
                self.threads.append(t)

    def _recv_exact(self, s, n):
        buf = b""
        while len(buf) < n and self.running:
            try:
                chunk = s.recv(n - len(buf))
            except socket.timeout:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf if len(buf) == n else None

    def _requests(self, client, broker, state):
        """Client to broker, a request at a time (4-byte size, then api_key first)."""
        while self.running:
            head = self._recv_exact(client, 4)
            body = head and self._recv_exact(client, int.from_bytes(head, "big"))
            if body is None:
                break
            if state["hold"] and int.from_bytes(body[:2], "big") == self.PRODUCE \
                    and not self._from_tool(body):
                with self.lock:
                    self.held += 1
                continue
            try:
                broker.sendall(head + body)
            except OSError:
                break
        self._close(client, broker)

    @staticmethod
    def _from_tool(body):
        """Whether a request comes from one of the test's tools (client.id mailer-*,
        the worker's is librdkafka's own): the request header's client id, an int16
        length after api_key, api_version and correlation_id."""
        n = int.from_bytes(body[8:10], "big", signed=True)
        return n > 0 and body[10:10 + n].startswith(b"mailer-")

    def _pump(self, src, dst):
        while self.running:
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close(src, dst)

    def _close(self, *socks):
        for x in socks:
            try:
                x.close()
            except OSError:
                pass

    def stop(self):
        self.running = False
        self.sock.close()
        with self.lock:
            for client, broker, _ in self.conns:
                self._close(client, broker)
        for t in self.threads:
            t.join(timeout=5)


def test_a_results_producer_that_reports_nothing_is_replaced_and_nothing_sent_twice(
        capture_server, worker):
    """results.stall.ms: the results producer's connections stop answering its writes
    (a proxy in front of the broker holds every Produce request on them) while Kafka
    answers everything else and new connections work, as the results producer stuck
    after an outage looked (200 results unacknowledged for minutes, the worker's requests
    held). After results.stall.ms with no delivery report the worker replaces its
    producer (an error line, the metric); the replaced one gives its records back and is
    closed, the new one stores them. Every result stored once, every request committed,
    each mail sent once, the worker still running."""
    from harness import free_port
    proxy, kafka, broker = proxied_kafka("kafka-proxied")
    w = None
    try:
        topics = Topics.new(partitions=2).create(kafka)
        server = capture_server()
        port = free_port()
        first, n = 20, 120
        w = worker(cfg(kafka, topics, server.url, results_stall_ms=3000,
                       metrics_listen=f"127.0.0.1:{port}"))
        produce_then_hold(kafka, topics, proxy.hold_open_connections, first, n)

        def replaced():
            return replacements(w, 3000)
        wait_for(lambda: replaced() or not w.alive(), 90, "the results producer replaced")
        assert w.alive(), w.log_tail()
        assert proxy.held >= 1
        assert replaced()[0]["level"] == "error", w.log_tail()
        assert_all_sent_once_and_committed(kafka, topics, server, n)
        assert kafka.count(topics.results) == n, "each result stored once"
        assert "replaced results producer closed" in w.log(), w.log_tail()
        assert replaced_metric(port) == len(replaced()) >= 1
        assert w.alive(), w.log_tail()
    finally:
        if w:
            w.stop()
        next(broker, None)
        proxy.stop()


def proxied_kafka(tag):
    """A broker behind a ProduceHoldingProxy: (proxy, kafka, broker generator)."""
    proxy = ProduceHoldingProxy()
    kafka = Kafka.start(make_tmpdir(tag), local=True,
                        props=[f"advertised.listeners=PLAINTEXT://127.0.0.1:{proxy.port}"])
    proxy.target = kafka.port
    broker = ready_kafka(kafka)
    next(broker)
    return proxy, kafka, broker


def replacements(w, stall_ms):
    """The worker's "replacing it" log lines (results.stall.ms of @stall_ms)."""
    head = ("no delivery report from the results producer for results.stall.ms "
            f"({stall_ms} ms)")
    return [f for f in (parse_logfmt(x) for x in w.log().splitlines())
            if f["msg"].startswith(head)]


def produce_then_hold(kafka, topics, hold, first, n):
    """Requests 0..@first done and committed, then @hold() on the proxy, then the
    requests up to @n."""
    kafka.produce(topics.requests, [make_request(i) for i in range(first)])
    kafka.wait_committed(topics.group, topics.requests, timeout=60)
    hold()
    kafka.produce(topics.requests, [make_request(i) for i in range(first, n)])


def assert_all_sent_once_and_committed(kafka, topics, server, n):
    a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=90)
    assert a["lost"] == 0 and a["final"] == n, a
    kafka.wait_committed(topics.group, topics.requests, timeout=60)
    mids = captured_mids(server.dir)
    assert len(mids) == n and max(mids.values()) == 1, mids.most_common(3)


def replaced_metric(port):
    """kafka_mailer_results_producer_replaced_total of the worker's /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^kafka_mailer_results_producer_replaced_total (\S+)$", text, re.M)
    assert m, text
    return float(m.group(1))


def test_results_producers_are_replaced_again_while_the_topics_store_nothing(
        capture_server, worker):
    """results.stall.ms while no write of any producer is answered (the proxy holds
    every Produce request, on new connections too): each new producer is replaced in
    turn after results.stall.ms, the one before having given its records back (so the
    worker goes on: no exit). Once writes pass again the next producer stores every
    result; every request committed, each mail sent once, the metric the number of
    replacements."""
    from harness import free_port
    proxy, kafka, broker = proxied_kafka("kafka-proxied-all")
    w = None
    try:
        topics = Topics.new(partitions=2).create(kafka)
        server = capture_server()
        port = free_port()
        first, n = 20, 80
        w = worker(cfg(kafka, topics, server.url, results_stall_ms=2000,
                       metrics_listen=f"127.0.0.1:{port}"))
        produce_then_hold(kafka, topics, proxy.hold_all, first, n)
        wait_for(lambda: len(replacements(w, 2000)) >= 2 or not w.alive(), 90,
                 "the results producer replaced twice")
        assert w.alive(), w.log_tail()
        assert w.log().count("replaced results producer closed") >= 1, w.log_tail()
        proxy.release()
        assert_all_sent_once_and_committed(kafka, topics, server, n)
        assert w.alive(), w.log_tail()
        assert "the producer replaced before still holds" not in w.log(), w.log_tail()
        assert replaced_metric(port) == len(replacements(w, 2000)) >= 2
    finally:
        if w:
            w.stop()
        next(broker, None)
        proxy.stop()


# A librdkafka whose purge does nothing: a producer that keeps its records when
# replaced, as one whose threads no longer answer would.
PURGE_SHIM = """
int rd_kafka_purge(void *rk, int purge_flags);
int rd_kafka_purge(void *rk, int purge_flags) {
        (void)rk;
        (void)purge_flags;
        return 0;
}
"""


def test_a_worker_whose_replaced_results_producer_keeps_its_records_exits_3(
        capture_server, worker):
    """The producer replaced after results.stall.ms does not give its records back
    (librdkafka's purge made a no-op by a preloaded library) and the new one gets no
    delivery report either: at the next results.stall.ms the worker cannot replace it
    again, says why (an error line) and stops as on SIGTERM with exit status 3, its
    results unacknowledged and their requests uncommitted. A worker started again once
    writes pass sends what was not committed: nothing lost."""
    import subprocess
    proxy, kafka, broker = proxied_kafka("kafka-proxied-keep")
    w = None
    try:
        d = make_tmpdir("purge-shim")
        (d / "shim.c").write_text(PURGE_SHIM)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(d / "shim.so"),
                        str(d / "shim.c")], check=True, timeout=60)
        topics = Topics.new(partitions=2).create(kafka)
        server = capture_server()
        first, n = 20, 60
        asan = os.environ.get("ASAN_OPTIONS", "")
        env = {"LD_PRELOAD": str(d / "shim.so"),
               "ASAN_OPTIONS": f"{asan}:verify_asan_link_order=0".lstrip(":")}
        conf = cfg(kafka, topics, server.url, results_stall_ms=2000,
                   shutdown_timeout_ms=3000)
        w = worker(conf, env=env)
        produce_then_hold(kafka, topics, proxy.hold_all, first, n)
        rc = w.wait(90)
        assert rc == 3, w.log_tail()
        assert len(replacements(w, 2000)) == 2, w.log_tail()
        stop = [f for f in (parse_logfmt(x) for x in w.log().splitlines())
                if f["msg"].startswith("results producer not replaced: stopping")]
        assert stop and stop[0]["level"] == "error", w.log_tail()
        assert "the producer replaced before still holds" in stop[0].get("reason", ""), \
            w.log_tail()
        assert not kafka.fully_committed(topics.group, topics.requests)
        assert kafka.count(topics.results) < n, "results held"
        proxy.release()
        w2 = worker(conf)
        a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=120)
        assert a["lost"] == 0 and a["final"] == n, a
        kafka.wait_committed(topics.group, topics.requests, timeout=60)
        assert w2.alive(), w2.log_tail()
    finally:
        if w:
            w.stop()
        next(broker, None)
        proxy.stop()


def test_commits_unanswered_while_the_broker_is_frozen_are_offered_again(
        own_kafka, capture_server, worker):
    """The broker frozen (SIGSTOP) for 4 s while results flow at about 100/s: its
    connections stay open and answer nothing, so the routine commit made then (every
    second, of the results acknowledged before the freeze) has no answer. After
    commit.timeout.ms the worker offers what it carried again (a warning, the counter);
    when the broker wakes everything is sent once and committed. inflight.max is far
    above the load so that only the routine commit runs."""
    import re
    import urllib.request
    from harness import free_port
    kafka = own_kafka
    topics = Topics.new(partitions=2).create(kafka)
    server = capture_server(delay_data=0.02)
    port = free_port()
    n = 1200
    kafka.produce(topics.requests, make_requests(n))
    w = worker(cfg(kafka, topics, server.url, inflight_max=5000, smtp_sessions_max=2,
                   commit_timeout_ms=300, commit_interval_ms=1000,
                   metrics_listen=f"127.0.0.1:{port}"))
    wait_for(lambda: kafka.count(topics.results) >= 200, 60, "200 results", interval=0.1)
    pid = kafka.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(4)
    finally:
        os.kill(pid, signal.SIGCONT)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^kafka_mailer_commits_unanswered_total (\S+)$", text, re.M)
    assert m and float(m.group(1)) >= 1, text
    assert "offset commit not answered within commit.timeout.ms (300 ms)" in w.log()
    a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=120)
    assert_all_sent_once_or_more(a, n)
    kafka.wait_committed(topics.group, topics.requests, timeout=60)
    assert max(captured_mids(server.dir).values()) == 1, "nothing sent twice"


def test_a_partition_that_delivers_nothing_for_fetch_stall_ms_is_fetched_anew(
        own_kafka, capture_server, worker):
    """The broker frozen (SIGSTOP) while most of a partition's requests are not fetched
    yet: the worker sends what it has, then waits for messages while its position is
    below the partition's end. After fetch.stall.ms it warns (position, end, what it
    does) and restarts the partition's fetch from its position (a seek); when the broker
    wakes, every request is sent exactly once and committed: the restart skips nothing
    and repeats nothing."""
    import urllib.request
    from harness import free_port
    kafka = own_kafka
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server()
    port = free_port()
    n = 20_000
    # Batches of 3 requests and fetches of one batch: the worker takes a few thousand
    # a second, and inflight.max above n never pauses it, so that when the broker
    # freezes it has sent what it fetched and waits, far behind the end.
    kafka.produce(topics.requests, make_requests(n), "-X", "batch.size=4096")
    conf = cfg(kafka, topics, server.url, inflight_max=2 * n, fetch_stall_ms=1500,
               kafka_max_partition_fetch_bytes=4096, metrics_listen=f"127.0.0.1:{port}")
    if fast_group():
        # the classic protocol: the member keeps its partition through the freeze
        conf["kafka.consumer.session.timeout.ms"] = 45000
    w = worker(conf)

    def consumed():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                        timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0
        m = re.search(r'^kafka_mailer_requests_consumed_total(?:\{[^}]*\})? (\S+)$', text,
                      re.M)
        return float(m.group(1)) if m else 0

    # frozen early (the worker's own count, read every 20 ms): far behind the end
    wait_for(lambda: consumed() >= 50, 60, "50 requests consumed", interval=0.02)
    pid = kafka.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        taken = consumed()
        assert taken < n, f"precondition: the worker took all {n} before the freeze"
        # A seek leaves librdkafka with no position until a message comes: the watch
        # keeps the last one and, the broker still frozen, restarts again a period later.
        wait_for(lambda: "restarts=2" in w.log(), 20, "two fetch.stall.ms warnings",
                 interval=0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    line = next(x for x in w.log().splitlines()
                if "partition delivers nothing while behind its end" in x)
    f = parse_logfmt(line)
    assert f["level"] == "warn" and f["partition"] == "0" and f["restarts"] == "1", line
    assert int(f["position"]) < int(f["end"]) <= n, line
    assert int(f["idle_ms"]) >= 1500, line
    second = next(x for x in w.log().splitlines() if "restarts=2" in x)
    assert parse_logfmt(second)["position"] == f["position"], second
    a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=180)
    assert_all_sent_once_or_more(a, n)
    assert max(captured_mids(server.dir).values()) == 1, "nothing sent twice"
    assert "offset seen already" not in w.log()
    kafka.wait_committed(topics.group, topics.requests, timeout=60)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^kafka_mailer_fetch_restarts_total\{topic="requests"\} (\S+)$', text,
                  re.M)
    assert m and float(m.group(1)) >= 1, text


def test_a_worker_with_nothing_moving_says_what_it_waits_on_every_stall_warn_ms(
        kafka, servers, worker):
    """A relay that accepts connections and never answers: the five requests wait in
    a session greeting that never comes. Nothing is consumed, finished or committed,
    so every stall.warn.ms the worker warns, naming what it holds and waits on."""
    topics = Topics.new(partitions=1).create(kafka)
    silent = start_silent(servers)
    kafka.produce(topics.requests, make_requests(5))
    w = worker(cfg(kafka, topics, f"smtp://127.0.0.1:{silent.port}", stall_warn_ms=1500,
                   smtp_timeout_connect_ms=60000, smtp_timeout_command_ms=60000))
    w.wait_log("results read at assignment", timeout=30)
    wait_for(lambda: w.log().count("no progress for stall.warn.ms (1500 ms)") >= 2, 30,
             "two stall warnings")
    line = next(x for x in w.log().splitlines() if "no progress for stall.warn.ms" in x)
    for field in ("inflight=5", "held=5", "results_unacknowledged=0", "smtp_queued=5",
                  "partitions_waiting_for_results_read=0"):
        assert field in line, line
    assert kafka.count(topics.results) == 0


def test_sigterm_with_kafka_away_exits_within_the_shutdown_timeout(
        own_kafka, capture_server, worker):
    """Kafka is stopped, then the worker gets SIGTERM: its last commits cannot be
    answered. It still exits within shutdown.timeout.ms (librdkafka's own wait for
    a commit without a coordinator is a session timeout, 45 s)."""
    kafka = own_kafka
    topics = Topics.new(partitions=4).create(kafka)
    server = capture_server()
    kafka.produce(topics.requests, make_requests(200))
    w = worker(cfg(kafka, topics, server.url, shutdown_timeout_ms=5000))
    wait_for(lambda: kafka.count(topics.results) >= 200, 60, "200 results", interval=0.1)
    kafka.stop()
    try:
        time.sleep(2)
        t0 = time.monotonic()
        w.send_signal(signal.SIGTERM)
        rc = w.wait(60)
        took = time.monotonic() - t0
        print(f"exit {rc} {took:.1f} s after SIGTERM with Kafka away")
        assert took < 5 + 2, f"exit took {took:.1f} s"
        assert "stopped" in w.log(), w.log_tail()
    finally:
        r = kafka.restart()
        assert r.returncode == 0, r.stderr[-3000:]
        kafka.wait_ready(60)
    # Nothing is lost: whatever was not committed is consumed again.
    w.start()
    a = kafka.wait_audit(topics, 200, capture_dir=server.dir, timeout=120)
    assert a["lost"] == 0, a["lost_list"]


# --- SMTP unavailable ---------------------------------------------------------------------

def test_smtp_server_down_for_20s_backs_off_quietly_then_sends_everything(
        kafka, servers, worker):
    topics = Topics.new(partitions=4).create(kafka)
    server = start_capture(servers, delay_data=0.02)
    port, dir = server.port, server.dir
    n = 1500
    kafka.produce(topics.requests, make_requests(n))
    w = worker(cfg(kafka, topics, server.url, inflight_max=100, smtp_sessions_max=10,
                   retry_attempts_max=20, retry_backoff_initial_ms=100,
                   retry_backoff_max_ms=1000, smtp_relay_backoff_initial_ms=200,
                   smtp_relay_backoff_max_ms=2000))
    wait_for(lambda: kafka.count(topics.results) >= 200, 60, "200 results", interval=0.1)

    server.stop()  # connections refused from now on
    time.sleep(2)  # sends cut mid-transaction settle
    cpu0, t0 = cpu_seconds(w.pid), time.monotonic()
    results_down = kafka.count(topics.results)
    time.sleep(18)
    cpu = cpu_seconds(w.pid) - cpu0
    elapsed = time.monotonic() - t0
    assert w.alive(), w.log_tail()
    assert results_down < n, "the server went down under load"
    # Mail waits for the relay: no burst of failed results, no busy loop.
    assert kafka.count(topics.results) - results_down <= 100
    assert cpu < 0.1 * elapsed, f"worker used {cpu:.2f}s of CPU in {elapsed:.1f}s"

    start_capture(servers, dir=dir, port=port)  # the same port, the same folder
    a = kafka.wait_audit(topics, n, capture_dir=dir, timeout=120)
    assert_all_sent_once_or_more(a, n)
    kafka.wait_committed(topics.group, topics.requests, timeout=30)


def test_relay_back_after_20s_down_is_used_within_2s_with_default_backoff(
        kafka, servers, worker):
    """smtp.relay.backoff.* at their defaults (1 s doubling to 60 s): by the end of a
    20 s outage the backoff has grown past 10 s, but a relay that refuses connections
    is tried every smtp.relay.probe.ms (1 s), so sending resumes within 2 s of its
    return; no request fails and the worker neither spins nor fills its log."""
    topics = Topics.new(partitions=4).create(kafka)
    server = start_capture(servers, delay_data=0.02)
    port, dir = server.port, server.dir
    n = 1500
    kafka.produce(topics.requests, make_requests(n))
    w = worker(cfg(kafka, topics, server.url, inflight_max=100, smtp_sessions_max=10))
    wait_for(lambda: kafka.count(topics.results) >= 200, 60, "200 results", interval=0.1)

    server.stop()  # connections refused from now on
    down_at = time.monotonic()
    cpu0 = cpu_seconds(w.pid)
    time.sleep(20)
    cpu = cpu_seconds(w.pid) - cpu0
    captured_before = server.count()
    back = start_capture(servers, dir=dir, port=port)  # the same port, the same folder
    back_at = time.monotonic()
    wait_for(lambda: back.count() > captured_before, 10, "a message after the relay's return",
             interval=0.05)
    resumed = time.monotonic() - back_at
    print(f"relay down {back_at - down_at:.1f} s; first message {resumed:.2f} s after its "
          f"return; worker CPU while down {cpu:.2f} s")
    assert resumed < 2.0, f"sending resumed {resumed:.2f} s after the relay came back"
    assert cpu < 0.1 * 20, f"worker used {cpu:.2f} s of CPU in 20 s"

    a = kafka.wait_audit(topics, n, capture_dir=dir, timeout=120)
    assert_all_sent_once_or_more(a, n)
    warnings = [ln for ln in w.log().splitlines() if "relay unhealthy" in ln]
    assert 1 <= len(warnings) <= 3, warnings


@pytest.mark.parametrize("fault", ["421-and-disconnect", "silent"])
def test_broken_smtp_server_retries_until_a_healthy_one_takes_over(
        kafka, servers, worker, fault):
    topics = Topics.new(partitions=4).create(kafka)
    if fault == "silent":
        bad = start_silent(servers)
    else:
        bad = start_sink(servers, extra=["-Q", "MAIL"])
    port = bad.port
    n = 100
    kafka.produce(topics.requests, make_requests(n))
    w = worker(cfg(kafka, topics, f"smtp://127.0.0.1:{port}", inflight_max=200,
                   smtp_sessions_max=10, smtp_timeout_connect_ms=500,
                   smtp_timeout_command_ms=500, smtp_timeout_data_ms=1000,
                   retry_attempts_max=100, retry_backoff_initial_ms=100,
                   retry_backoff_max_ms=500, smtp_relay_backoff_initial_ms=100,
                   smtp_relay_backoff_max_ms=500, throttle_rate_min=20,
                   log_level="debug"))
    w.wait_log("partitions assigned", timeout=30)
    time.sleep(5)
    if fault != "silent":
        # 421 is a throttling reply: the relay's rate comes down to throttle.rate.min
        # (20/s here), so within a bounded time every message has met it once
        def tried():
            return len(set(re.findall(r'msg=retrying id=(\S+)', w.log())))
        wait_for(lambda: tried() >= n, 60, "every message tried once", interval=0.2)
    assert kafka.count(topics.results) == 0, "nothing is final while the server is broken"
    if fault == "silent":
        assert bad.accepted > 0
        assert "tim" in w.log().lower(), "a timeout is logged"

    final = heal_and_audit(kafka, topics, servers, bad, port, n)
    if fault != "silent":
        # every message met the 421 at least once before it was sent
        assert min(r["attempts"] for r in final.values()) > 1
    kafka.wait_committed(topics.group, topics.requests, timeout=30)


# --- retry topic --------------------------------------------------------------------------

def test_sigterm_while_a_retry_waits_hands_it_to_the_retry_topic_and_repeats_nothing(
        kafka, capture_server, worker):
    """A request that got a 451 waits in memory for its retry (backoff 15 s, local
    window 60 s) while the rest of its partition is sent. At SIGTERM it goes to the
    retry topic, so its partition's watermark passes it and is committed: after a
    restart nothing that was sent is consumed, and so sent, again."""
    needs_retry_topic()
    topics = Topics.new(partitions=4).create(kafka)
    server = capture_server(tempfail_first=1)
    n = 400
    kafka.produce(topics.requests, make_requests(n))
    conf = cfg(kafka, topics, server.url, inflight_max=1000, smtp_sessions_max=10,
               retry_backoff_initial_ms=15000, retry_backoff_max_ms=15000,
               retry_local_window_ms=60000, retry_jitter_percent=0)
    w = worker(conf)
    wait_for(lambda: server.count() >= n - 1, 60, f"{n - 1} messages", interval=0.1)
    wait_for(lambda: kafka.count(topics.results) >= n - 1, 60, f"{n - 1} results",
             interval=0.1)
    assert w.stop(timeout=60) == 0, w.log_tail()
    assert 'msg="moved to the retry topic before release" waiting_retries=1' in w.log(), \
        w.log_tail()

    w.config.update({"retry.backoff.initial.ms": 100, "retry.backoff.max.ms": 300})
    w.start()
    a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=120)
    assert_all_sent_once_or_more(a, n)
    assert a["capture"]["duplicate_sends"] == 0, a["capture"]["duplicate_list"]
    kafka.wait_committed(topics.group, topics.requests, timeout=60)

def test_4xx_longer_than_the_local_window_goes_through_the_retry_topic(
        kafka, servers, worker):
    needs_retry_topic()
    topics = Topics.new(partitions=4).create(kafka)
    sink = start_sink(servers, extra=["-r", "RCPT"])
    port = sink.port
    n = 50
    kafka.produce(topics.requests, make_requests(n))
    w = worker(cfg(kafka, topics, sink.url, retry_local_window_ms=1000,
                   retry_backoff_initial_ms=100, retry_backoff_max_ms=300,
                   retry_attempts_max=100, retry_window_ms=120000))
    # Past the local window the requests move to the retry topic and the main
    # partitions commit, while the server still answers 4xx.
    wait_for(lambda: kafka.count(topics.retry) > 0, 30, "records on the retry topic",
             interval=0.2)
    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    assert kafka.count(topics.results) == 0, "nothing final while the server says 4xx"
    time.sleep(2)  # some requests go round the retry topic more than once

    final = heal_and_audit(kafka, topics, servers, sink, port, n)
    assert all(r["attempts"] > 1 for r in final.values())
    assert all(r["source"]["topic"] == topics.requests for r in final.values())
    assert kafka.count(topics.retry) > 0
    assert w.alive()


# --- deadlines ----------------------------------------------------------------------------

def test_expired_deadline_gives_expired_and_nothing_is_sent(kafka, capture_server, worker):
    topics = Topics.new(partitions=4).create(kafka)
    server = capture_server()
    late = [make_request(i, id=f"late-{i}", deadline="2020-01-01T00:00:00Z")
            for i in range(20)]
    on_time = [make_request(i, id=f"on-time-{i}", deadline="2100-01-01T00:00:00Z")
               for i in range(20)]
    kafka.produce(topics.requests, late + on_time)
    worker(cfg(kafka, topics, server.url))
    a = kafka.wait_audit(topics, 40, capture_dir=server.dir, timeout=60)
    assert a["status"]["expired"] == 20 and a["status"]["sent"] == 20, a["status"]
    time.sleep(0.5)
    captured = {m.msg["Message-ID"] for m in server.messages()}
    assert captured == {f"<{r['id']}@shop.example>" for r in on_time}
    final = final_by_id(kafka.results(topics.results, timeout=30))
    for r in late:
        assert final[r["id"]]["status"] == "expired"
        assert final[r["id"]]["attempts"] == 0


def test_deadline_passing_while_retrying_gives_expired_and_nothing_is_sent(
        kafka, servers, worker):
    topics = Topics.new(partitions=4).create(kafka)
    sink = start_sink(servers, extra=["-r", "RCPT"])
    port = sink.port
    deadline = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    reqs = [make_request(i, id=f"soon-{i}", deadline=deadline) for i in range(10)]
    kafka.produce(topics.requests, reqs)
    worker(cfg(kafka, topics, sink.url, retry_attempts_max=100,
               retry_backoff_initial_ms=100, retry_backoff_max_ms=300))
    time.sleep(6)  # the deadline has passed during the retries
    servers.remove(sink)
    sink.stop()
    healthy = start_capture(servers, port=port)
    a = kafka.wait_audit(topics, 10, capture_dir=healthy.dir, timeout=60)
    assert a["status"]["expired"] == 10, a["status"]
    time.sleep(1)
    assert healthy.count() == 0


# --- recipients: each one delivered or finally refused ---------------------------------

def deliveries(server):
    """recipient -> how many messages the capture server stored for it."""
    out = {}
    for m in server.messages():
        for r in m.meta["rcpt_tos"]:
            out[r] = out.get(r, 0) + 1
    return out


def test_a_recipient_deferred_on_its_first_tries_gets_the_mail_later_the_other_once(
        kafka, capture_server, worker):
    """The relay answers 451 to one recipient's RCPT three times: the other recipient
    is accepted in the first transaction and not sent to again; the deferred one is
    retried alone, with backoff, until accepted."""
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server(extra=["--tempfail-rcpt", "slow@:3"])
    kafka.produce(topics.requests, [make_request(0, id="two", to=["ok@example.com",
                                                                  "slow@example.com"])])
    worker(cfg(kafka, topics, server.url, retry_backoff_initial_ms=100,
               retry_backoff_max_ms=300, retry_jitter_percent=0))
    [r] = kafka.results(topics.results, wait=1, timeout=60)
    assert r["status"] == "sent" and r["delivered"] == "all", r
    assert r["attempts"] == 4, r
    assert {x["recipient"]: x["status"] for x in r["recipients"]} == {
        "ok@example.com": "sent", "slow@example.com": "sent"}
    assert "failed_recipients" not in r
    time.sleep(1)
    assert deliveries(server) == {"ok@example.com": 1, "slow@example.com": 1}
    assert len(set(captured_mids(server.dir))) == 1, "one Message-ID for both"


def test_250_recipients_to_a_relay_that_takes_100_go_in_three_transactions(
        kafka, capture_server, worker):
    """A relay that answers 452 (too many recipients) past 100 RCPTs: the rest goes
    in the next transaction at once, on the same try, each recipient once."""
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server(extra=["--max-rcpts", "100"])
    rcpts = [f"u{i}@example.com" for i in range(250)]
    kafka.produce(topics.requests, [make_request(0, id="many", to=rcpts[:100],
                                                 cc=rcpts[100:200], bcc=rcpts[200:])])
    worker(cfg(kafka, topics, server.url, request_max_recipients=300))
    [r] = kafka.results(topics.results, wait=1, timeout=60)
    assert r["status"] == "sent" and r["delivered"] == "all", r
    assert r["attempts"] == 1, r
    assert [len(m.meta["rcpt_tos"]) for m in server.wait_messages(3)] == [100, 100, 50]
    time.sleep(1)
    assert server.count() == 3
    assert deliveries(server) == {a: 1 for a in rcpts}


def test_smtp_transaction_max_recipients_splits_a_request(kafka, capture_server, worker):
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server()
    rcpts = [f"u{i}@example.com" for i in range(7)]
    kafka.produce(topics.requests, [make_request(0, id="split", to=rcpts)])
    worker(cfg(kafka, topics, server.url, smtp_transaction_max_recipients=3))
    [r] = kafka.results(topics.results, wait=1, timeout=60)
    assert r["delivered"] == "all" and r["attempts"] == 1, r
    assert [len(m.meta["rcpt_tos"]) for m in server.wait_messages(3)] == [3, 3, 1]
    assert deliveries(server) == {a: 1 for a in rcpts}


def test_a_message_refused_in_its_first_transaction_is_refused_for_every_recipient(
        kafka, capture_server, worker):
    """Seven recipients, three a transaction, a message over the relay's SIZE: the
    refusal of the message holds for those not tried yet too; one try, no retries."""
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server(extra=["--max-size", "2000"])
    rcpts = [f"u{i}@example.com" for i in range(7)]
    kafka.produce(topics.requests, [make_request(0, id="too-big", to=rcpts,
                                                 text="x" * 5000)])
    worker(cfg(kafka, topics, server.url, smtp_transaction_max_recipients=3,
               retry_backoff_initial_ms=100, retry_backoff_max_ms=200))
    [r] = kafka.results(topics.results, wait=1, timeout=60)
    assert r["status"] == "failed" and r["delivered"] == "none", r
    assert r["attempts"] == 1 and "SIZE" in r["error"], r
    assert [x["status"] for x in r["recipients"]] == ["failed"] * 7
    assert server.count() == 0


def test_a_deferred_recipient_handed_to_the_retry_topic_is_the_only_one_sent_again(
        kafka, capture_server, worker):
    """With no local retry window, the deferred recipient goes through the retry topic;
    its record says who has the mail already, so only the deferred one is sent again."""
    needs_retry_topic()
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server(extra=["--tempfail-rcpt", "slow@:2"])
    kafka.produce(topics.requests, [make_request(0, id="via-retry", to=[
        "ok@example.com", "slow@example.com", "also@example.com"])])
    worker(cfg(kafka, topics, server.url, retry_local_window_ms=0,
               retry_backoff_initial_ms=100, retry_backoff_max_ms=300))
    [r] = kafka.results(topics.results, wait=1, timeout=60)
    assert r["status"] == "sent" and r["delivered"] == "all", r
    assert kafka.count(topics.retry) >= 1
    time.sleep(1)
    assert deliveries(server) == {"ok@example.com": 1, "slow@example.com": 1,
                                  "also@example.com": 1}


def test_a_worker_killed_while_a_deferred_recipient_waits_sends_no_one_twice(
        kafka, capture_server, worker):
    """Partial progress is stored before the retry: a request with one recipient
    deferred goes to the retry topic at once (the local window is a minute), its offset
    commits, and a worker killed with SIGKILL while the retry waits leaves its next
    owner the record of who has the mail; each recipient gets it once."""
    needs_retry_topic()
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server(extra=["--tempfail-rcpt", "slow@:1"])
    kafka.produce(topics.requests, [make_request(0, id="partial", to=[
        "ok@example.com", "slow@example.com", "also@example.com"])])
    conf = cfg(kafka, topics, server.url, retry_local_window_ms=60000,
               retry_backoff_initial_ms=4000, retry_backoff_max_ms=4000,
               retry_jitter_percent=0)
    w = worker(conf)
    wait_for(lambda: kafka.count(topics.retry) >= 1, 30, "the retry record")
    kafka.wait_committed(conf["kafka.group.id"], topics.requests, timeout=30)
    w.kill()
    worker(conf)
    [r] = kafka.results(topics.results, wait=1, timeout=60)
    assert r["status"] == "sent" and r["delivered"] == "all", r
    time.sleep(1)
    assert deliveries(server) == {"ok@example.com": 1, "slow@example.com": 1,
                                  "also@example.com": 1}


def test_some_recipients_refused_for_good_or_out_of_tries_gives_sent_to_some(
        kafka, capture_server, worker):
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server(reject_rcpt="bad@", extra=["--tempfail-rcpt", "slow@:100"])
    kafka.produce(topics.requests, [make_request(0, id="mixed", to=[
        "ok@example.com", "bad@example.com", "slow@example.com"])])
    worker(cfg(kafka, topics, server.url, retry_attempts_max=3,
               retry_backoff_initial_ms=100, retry_backoff_max_ms=200))
    [r] = kafka.results(topics.results, wait=1, timeout=60)
    assert r["status"] == "sent" and r["delivered"] == "some", r
    assert r["attempts"] == 3
    by = {x["recipient"]: x for x in r["recipients"]}
    assert by["ok@example.com"]["status"] == "sent"
    assert by["ok@example.com"]["smtp_code"] == 250
    assert (by["bad@example.com"]["status"], by["bad@example.com"]["smtp_code"]) == (
        "failed", 550)
    assert (by["slow@example.com"]["status"], by["slow@example.com"]["smtp_code"]) == (
        "failed", 451)
    assert sorted(x["recipient"] for x in r["failed_recipients"]) == [
        "bad@example.com", "slow@example.com"]
    assert "delivered all=0 some=1 none=0" in kafka.results_summary(topics.results)
    time.sleep(1)
    assert deliveries(server) == {"ok@example.com": 1}


def test_a_result_too_large_for_kafka_loses_metadata_and_recipient_lists_not_delivered(
        kafka, capture_server, worker):
    """The results producer takes records of at most 4,000 bytes here: a result with 3 KB
    of metadata and 20 recipients of their own outcomes is published smaller, "truncated"
    saying so, "delivered" kept; a small one is published whole."""
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server(extra=["--tempfail-rcpt", "u7@:1"])
    rcpts = [f"u{i}@example.com" for i in range(20)]
    kafka.produce(topics.requests, [
        make_request(0, id="big-result", to=rcpts, metadata={"note": "m" * 3000}),
        make_request(1, id="small-result", metadata={"note": "small"})])
    worker(cfg(kafka, topics, server.url, kafka_producer_message_max_bytes=4000,
               retry_backoff_initial_ms=100, retry_backoff_max_ms=200))
    final = final_by_id(kafka.results(topics.results, wait=2, timeout=60))
    big, small = final["big-result"], final["small-result"]
    assert big["truncated"] is True and big["metadata"] is None, big
    assert big["status"] == "sent" and big["delivered"] == "all"
    assert "recipients" not in big and big["attempts"] == 2
    assert small["metadata"] == {"note": "small"} and "truncated" not in small
    time.sleep(1)
    assert deliveries(server) == {a: 1 for a in rcpts + ["user1@example.com"]}


# --- duplicate suppression ------------------------------------------------------------------

def test_the_same_id_published_twice_is_sent_once_with_two_results(
        kafka, capture_server, worker):
    needs_retry_topic()
    topics = Topics.new(partitions=4).create(kafka)
    server = capture_server()
    twice = make_request(0, id="published-twice")
    kafka.produce(topics.requests, [twice])
    worker(cfg(kafka, topics, server.url))
    kafka.wait_audit(topics, 1, timeout=60)
    others = make_requests(5)
    kafka.produce(topics.requests, [twice] + others)  # again, after it was finished

    a = kafka.wait_audit(topics, 7, capture_dir=server.dir, timeout=60)
    time.sleep(0.5)
    a = kafka.audit(topics, capture_dir=server.dir)
    assert a["lost"] == 0 and a["status"]["sent"] == 7, a
    assert a["capture"]["duplicate_sends"] == 0, a["capture"]["duplicate_list"]
    assert a["capture"]["message_ids"] == 6
    results = [r for r in kafka.results(topics.results, timeout=30)
               if r["id"] == "published-twice"]
    assert len(results) == 2
    assert len({(r["source"]["partition"], r["source"]["offset"]) for r in results}) == 2
    flagged = [r for r in results if r.get("duplicate") is True]
    assert len(flagged) == 1
    first = min(results, key=lambda r: r["source"]["offset"])
    assert flagged[0] is not first, "the repeat is the one marked duplicate"
    assert [m.msg["Message-ID"] for m in server.messages()].count(
        "<published-twice@shop.example>") == 1
