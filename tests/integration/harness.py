"""Integration test harness: real Kafka, real SMTP servers, the worker and its tools.

Everything here is bounded in time and every process it starts is tracked by pid and
stopped by pid (see ``Proc`` and ``stop_all``), also when a test fails.

Environment:
  KM_BUILD_DIR      where kafka-mailer and the mailer-* tools are (default: <repo>/build)
  KM_TEST_TMPDIR    base folder for test state (default: /dev/shm when writable, since
                    file creation in /tmp is slow on some machines, else the system tmp)
  KM_KAFKA_BOOTSTRAP  use this running broker instead of starting one
  KM_KAFKA_VERSION  the Kafka the tests start (deploy/local/kafka-start; default 4.4.0)
  KM_GROUP_PROTOCOL the workers' group.protocol (classic or consumer; default: the
                    worker's own default, classic)
  KM_KEEP_TMP=1     keep the per-session folder after the run (it is printed)
"""

from __future__ import annotations

import atexit
import collections
import email
import email.policy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "deploy" / "local"
SYSTEM_PYTHON = "/usr/bin/python3"  # has Debian's python3-aiosmtpd
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"

KAFKA_START_TIMEOUT = 240  # the first start on a machine also downloads the jars
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


def kafka_start_argv(dir, port, version: Optional[str] = None,
                     props: Sequence[str] = ()) -> list:
    """deploy/local/kafka-start for @version (default KM_KAFKA_VERSION) with the test
    broker settings, then @props (KEY=VALUE, later ones win)."""
    version = version or KAFKA_VERSION
    argv = [LOCAL / "kafka-start", "--version", version]
    if not version.startswith("3."):
        for prop in KAFKA4_TEST_PROPS:
            argv += ["--set", prop]
    for prop in props:
        argv += ["--set", prop]
    return argv + [dir, port]


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
PROC_STOP_TIMEOUT = 30
TOOL_TIMEOUT = 120


def build_dir() -> Path:
    return Path(os.environ.get("KM_BUILD_DIR") or (REPO / "build")).resolve()


def binary(name: str) -> Path:
    return build_dir() / name


def have_binary(name: str) -> bool:
    p = binary(name)
    return p.is_file() and os.access(p, os.X_OK)


def tmp_base() -> Path:
    """Where a run's folder goes: KM_TEST_TMPDIR, else /dev/shm when writable (file
    creation in /tmp is slow on some machines, which throttles capture-server), else the
    system temporary folder."""
    base = os.environ.get("KM_TEST_TMPDIR")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
        return Path(base)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


_run_root: Optional[Path] = None


def run_root() -> Path:
    """This test run's folder (created on first use); everything a test writes is under
    it. conftest removes it after a run that passed unless KM_KEEP_TMP=1."""
    global _run_root
    if _run_root is None:
        _run_root = Path(tempfile.mkdtemp(prefix="km-run-", dir=tmp_base()))
    return _run_root


def remove_run_root() -> None:
    global _run_root
    if _run_root is not None:
        shutil.rmtree(_run_root, ignore_errors=True)
        _run_root = None


def make_tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=run_root()))


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05):
    """Polls pred() until it returns a true value (returned) or timeout seconds pass
    (TimeoutError naming what)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- processes -------------------------------------------------------------------------

_live: dict[int, "Proc"] = {}


class Proc:
    """A child process in its own session, with stdout/stderr in log files.

    stop() sends SIGTERM and waits (bounded), then SIGKILL; kill() sends SIGKILL.
    Only the pid of this child is ever signalled."""

    def __init__(self, argv: Sequence[str], name: str, logdir: Path,
                 env: Optional[dict] = None, stdout_log: bool = True):
        self.argv = [str(a) for a in argv]
        self.name = name
        logdir.mkdir(parents=True, exist_ok=True)
        self.log_path = logdir / f"{name}.log"
        self.out_path = logdir / f"{name}.out" if stdout_log else self.log_path
        self._err = open(self.log_path, "ab")
        self._out = open(self.out_path, "ab") if stdout_log else self._err
        full_env = dict(os.environ)
        if env:
            full_env.update({k: str(v) for k, v in env.items()})
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                      stdout=self._out, stderr=self._err, env=full_env,
                                      start_new_session=True)
        self.pid = self.popen.pid
        _live[self.pid] = self
        # A record for tests/run, which stops what a killed pytest left behind.
        self._pidfile = run_root() / "pids" / str(self.pid)
        self._pidfile.parent.mkdir(exist_ok=True)
        self._pidfile.write_text(self.argv[0] + "\n")

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """Waits for exit; returns the exit status (negative: killed by that signal)."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} (pid {self.pid}) still running after "
                               f"{timeout:.1f}s") from None

    def stop(self, timeout: float = PROC_STOP_TIMEOUT, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (or sig), wait up to timeout, then SIGKILL. Returns the exit status."""
        try:
            if self.alive():
                os.kill(self.pid, sig)
                try:
                    return self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    print(f"harness: {self.name} pid {self.pid} ignored signal {sig} for "
                          f"{timeout}s: SIGKILL", file=sys.stderr)
                    os.kill(self.pid, signal.SIGKILL)
            return self.popen.wait(timeout=10)
        finally:
            self._close()

    def kill(self) -> int:
        """SIGKILL (a crash, as far as the process can tell). Returns the exit status."""
        try:
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
            return self.popen.wait(timeout=10)
        finally:
            self._close()

    def _close(self) -> None:
        _live.pop(self.pid, None)
        try:
            self._pidfile.unlink()
        except FileNotFoundError:
            pass
        for f in {self._out, self._err}:
            try:
                f.close()
            except OSError:
                pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-n:])


def stop_all() -> None:
    """Stops every child still running (tests normally stop their own)."""
    for p in list(_live.values()):
        try:
            p.stop(timeout=10)
        except Exception as e:  # keep going: stop the others
            print(f"harness: stopping {p.name} pid {p.pid}: {e}", file=sys.stderr)


atexit.register(stop_all)


def run(argv: Sequence[str], timeout: float = TOOL_TIMEOUT, input: Optional[bytes] = None,
        env: Optional[dict] = None, check: bool = False) -> subprocess.CompletedProcess:
    """Runs a command to completion (bounded), capturing stdout and stderr as text."""
    full_env = dict(os.environ)
    if env:
        full_env.update({k: str(v) for k, v in env.items()})
    argv = [str(a) for a in argv]
    try:
        r = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired as e:
        raise TimeoutError(f"{' '.join(argv)}: no exit after {timeout}s; stderr: "
                           f"{(e.stderr or b'').decode(errors='replace')[-2000:]}") from None
    res = subprocess.CompletedProcess(argv, r.returncode,
                                      r.stdout.decode(errors="replace"),
                                      r.stderr.decode(errors="replace"))
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {res.returncode}\n"
                             f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-4000:]}")
    return res


# --- Kafka -----------------------------------------------------------------------------

class Kafka:
    """A single-node Apache Kafka started with deploy/local/kafka-start (or an existing
    broker from KM_KAFKA_BOOTSTRAP)."""

    def __init__(self, bootstrap: str, dir: Optional[Path] = None,
                 props: Sequence[str] = ()):
        self.bootstrap = bootstrap
        self.dir = dir
        self.port = int(bootstrap.rsplit(":", 1)[1])
        self.props = tuple(props)

    @classmethod
    def start(cls, dir: Optional[Path] = None, version: Optional[str] = None,
              local: bool = False, props: Sequence[str] = ()) -> "Kafka":
        """A broker of @version (default KM_KAFKA_VERSION) with broker settings @props
        (KEY=VALUE); KM_KAFKA_BOOTSTRAP's instead unless @local (a test that stops its
        broker, or needs settings of its own, needs its own)."""
        external = os.environ.get("KM_KAFKA_BOOTSTRAP")
        if external and not local:
            return cls(external)
        dir = dir or make_tmpdir("kafka")
        last = ""
        for _ in range(3):  # a port picked free can be taken before the broker binds it
            port = free_port()
            r = run(kafka_start_argv(dir, port, version, props),
                    timeout=KAFKA_START_TIMEOUT)
            if r.returncode == 0:
                return cls(r.stdout.strip().splitlines()[-1], dir, props)
            last = r.stderr
        raise RuntimeError(f"kafka-start failed:\n{last[-4000:]}")

    @property
    def pid(self) -> Optional[int]:
        try:
            return int((self.dir / "kafka.pid").read_text()) if self.dir else None
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        if self.dir is not None:
            run([LOCAL / "kafka-stop", self.dir], timeout=60)

    def restart(self) -> subprocess.CompletedProcess:
        """Starts the stopped broker again on its folder and port (its data kept)."""
        assert self.dir is not None
        return run(kafka_start_argv(self.dir, self.port, props=self.props),
                   timeout=KAFKA_START_TIMEOUT)

    def log_tail(self, n: int = 40) -> str:
        if self.dir is None:
            return ""
        try:
            return "\n".join((self.dir / "kafka.log").read_text(errors="replace")
                             .splitlines()[-n:])
        except FileNotFoundError:
            return ""

    # thin wrappers around the C tools, bound to this broker
    def admin(self, *args, timeout: float = TOOL_TIMEOUT, check: bool = False):
        return run([binary("mailer-admin"), "-b", self.bootstrap, *args],
                   timeout=timeout, check=check)

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
        return run([binary("mailer-produce"), "-b", self.bootstrap, "-t", topic, *extra],
                   input=data, timeout=timeout, check=True)

    def results(self, topic: str, wait: Optional[int] = None, timeout: float = 60,
                check: bool = True) -> list:
        """Reads the results topic with mailer-results; returns the parsed JSON lines.
        With wait=N, reads until N distinct ids have a final result (bounded)."""
        args = [binary("mailer-results"), "-b", self.bootstrap, "-t", topic]
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
        args = [binary("mailer-audit"), "-b", self.bootstrap, "--requests",
                topics.requests, "--results", topics.results, "--json",
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
        return run([binary("mailer-results"), "-b", self.bootstrap, "-t", topic,
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


# --- SMTP servers ------------------------------------------------------------------------

@dataclass
class CapturedMessage:
    seq: int
    meta: dict          # mail_from, rcpt_tos, peer, received_at, tls, auth_user
    raw: bytes          # DATA as received (dot-unstuffed)
    msg: email.message.EmailMessage

    @property
    def mail_from(self) -> str:
        return self.meta["mail_from"]

    @property
    def rcpt_tos(self) -> list:
        return self.meta["rcpt_tos"]


class CaptureServer:
    """deploy/local/capture-server (aiosmtpd) on a free port, storing into .dir."""

    def __init__(self, proc: Proc, port: int, dir: Path, tls: bool):
        self.proc = proc
        self.port = port
        self.dir = dir
        self.tls = tls

    @classmethod
    def start(cls, dir: Optional[Path] = None, tls: bool = False, require_tls: bool = False,
              auth: Optional[str] = None, tempfail_first: int = 0, tempfail_every: int = 0,
              reject_rcpt: Optional[str] = None, delay_data: float = 0.0,
              pipelining: bool = True, extra: Sequence[str] = (),
              timeout: float = 30, port: Optional[int] = None) -> "CaptureServer":
        """port: listen on this port (e.g. to take over from a server that was stopped)
        instead of a free one; dir may be an earlier server's folder (numbering goes on)."""
        dir = dir or make_tmpdir("capture")
        fixed_port = port
        last = ""
        for attempt in range(3):
            port = fixed_port or free_port()
            argv = [SYSTEM_PYTHON, LOCAL / "capture-server", "--port", port, "--dir", dir]
            if tls:
                argv.append("--tls")
            if require_tls:
                argv.append("--require-tls")
            if auth:
                argv += ["--auth", auth]
            if tempfail_first:
                argv += ["--tempfail-first", tempfail_first]
            if tempfail_every:
                argv += ["--tempfail-every", tempfail_every]
            if reject_rcpt:
                argv += ["--reject-rcpt", reject_rcpt]
            if delay_data:
                argv += ["--delay-data", delay_data]
            if not pipelining:
                argv.append("--no-pipelining")
            argv += list(extra)
            proc = Proc(argv, f"capture-{port}", dir / "logs")
            ready = dir / "ready"
            try:
                wait_for(lambda: ready.exists() or not proc.alive(), timeout,
                         "capture-server ready")
            except TimeoutError:
                proc.kill()
                raise
            if proc.alive():
                return cls(proc, port, dir, tls)
            last = proc.log()
            proc.stop()
            if fixed_port:
                time.sleep(0.5)
        raise RuntimeError(f"capture-server did not start:\n{last[-4000:]}")

    @property
    def ca_file(self) -> Optional[Path]:
        return self.dir / "tls" / "ca.pem" if self.tls else None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def count(self) -> int:
        return sum(1 for p in self.dir.glob("[0-9]*.json"))

    def messages(self) -> list:
        """Every stored message, in arrival order, parsed with email (policy.default)."""
        out = []
        for meta_path in sorted(self.dir.glob("[0-9]*.json")):
            seq = int(meta_path.stem)
            raw = meta_path.with_suffix(".eml").read_bytes()
            out.append(CapturedMessage(
                seq=seq, meta=json.loads(meta_path.read_text()), raw=raw,
                msg=email.message_from_bytes(raw, policy=email.policy.default)))
        return out

    def wait_messages(self, n: int, timeout: float = 60) -> list:
        wait_for(lambda: self.count() >= n, timeout, f"{n} captured messages",
                 interval=0.1)
        return self.messages()

    def stop(self) -> int:
        return self.proc.stop()


class SmtpSink:
    """Postfix's smtp-sink on a free port (accepts and discards; fault options in extra,
    e.g. ["-W", ".:1"] to delay the final reply by 1 s)."""

    def __init__(self, proc: Proc, port: int):
        self.proc = proc
        self.port = port

    @classmethod
    def start(cls, extra: Sequence[str] = (), logdir: Optional[Path] = None,
              timeout: float = 15, port: Optional[int] = None) -> "SmtpSink":
        """port: listen on this port instead of a free one."""
        logdir = logdir or make_tmpdir("sink")
        fixed_port = port
        last = ""
        for _ in range(3):
            port = fixed_port or free_port()
            argv = [SMTP_SINK]
            if os.geteuid() == 0:
                argv += ["-u", "nobody"]
            argv += ["-c", "-m", "1024", *extra, f"127.0.0.1:{port}", "1024"]
            proc = Proc(argv, f"smtp-sink-{port}", logdir)
            try:
                wait_for(lambda: port_open(port) or not proc.alive(), timeout,
                         f"smtp-sink on port {port}")
            except TimeoutError:
                proc.kill()
                raise
            if proc.alive():
                return cls(proc, port)
            last = proc.log()
            proc.stop()
            if fixed_port:
                time.sleep(0.5)
        raise RuntimeError(f"smtp-sink did not start:\n{last[-2000:]}")

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> int:
        return self.proc.stop(timeout=10)


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


class Worker:
    """A kafka-mailer process: `kafka-mailer -c CONFIG -X key=value...`.

    config is written as a properties file; overrides become -X arguments. stderr (the
    log) goes to .log_path. stop() = SIGTERM and a bounded wait (the drain),
    kill() = SIGKILL (a crash), restart() = a new process with the same settings."""

    _n = 0

    def __init__(self, config: dict, overrides: Optional[dict] = None,
                 workdir: Optional[Path] = None, name: Optional[str] = None,
                 env: Optional[dict] = None, args: Sequence[str] = ()):
        Worker._n += 1
        self.name = name or f"worker{Worker._n}"
        self.workdir = workdir or make_tmpdir(self.name)
        self.config = dict(config)
        self.overrides = dict(overrides or {})
        self.env = dict(env or {})
        self.args = list(args)
        self.config_path = self.workdir / f"{self.name}.properties"
        self.proc: Optional[Proc] = None
        self.starts = 0

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

    def write_config(self) -> None:
        lines = ["# written by tests/integration/harness.py"]
        for k, v in self.config.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            lines.append(f"{k}={v}")
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.config_path)

    def argv(self) -> list:
        argv = [binary("kafka-mailer"), "-c", self.config_path]
        for k, v in self.overrides.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            argv += ["-X", f"{k}={v}"]
        return argv + self.args

    def start(self) -> "Worker":
        assert self.proc is None or not self.proc.alive(), "worker already running"
        self.write_config()
        self.starts += 1
        self.proc = Proc(self.argv(), f"{self.name}.{self.starts}", self.workdir,
                         env=self.env)
        return self

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait up to timeout (then SIGKILL). Returns the exit status."""
        assert self.proc is not None
        return self.proc.stop(timeout=timeout)

    def kill(self) -> int:
        assert self.proc is not None
        return self.proc.kill()

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def restart(self, timeout: float = 60) -> "Worker":
        if self.alive():
            self.stop(timeout)
        return self.start()

    @property
    def log_path(self) -> Optional[Path]:
        return self.proc.log_path if self.proc else None

    def log(self) -> str:
        """This run's stderr."""
        return self.proc.log() if self.proc else ""

    def run_logs(self) -> list:
        """stderr of each run of this worker, oldest first."""
        parts = []
        for i in range(1, self.starts + 1):
            p = self.workdir / f"{self.name}.{i}.log"
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return parts

    def all_logs(self) -> str:
        """stderr of every run of this worker, oldest first."""
        return "\n".join(self.run_logs())

    def log_tail(self, n: int = 60) -> str:
        return self.proc.log_tail(n) if self.proc else ""

    def wait_log(self, text: str, timeout: float = 30) -> None:
        """Waits until text appears in this run's log (fails early if the worker exits)."""
        def seen():
            if text in self.log():
                return True
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) before "
                                     f"logging {text!r}:\n{self.log_tail()}")
            return False
        wait_for(seen, timeout, f"{text!r} in {self.name}'s log")


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
