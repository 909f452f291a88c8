"""The local stack the integration tests and the benchmarks run: a real Kafka broker
(deploy/local/kafka-start), SMTP servers (Postfix's smtp-sink, deploy/local/capture-server)
and kafka-mailer workers, and the mailer-* tools run to completion.

Everything here is bounded in time and every process it starts is tracked by pid and
stopped by pid (see ``Proc`` and ``stop_all``, which also runs at exit), never by name.
Each process also leaves a record, <run root>/pids/<pid> holding its program, for
tests/run's cleanup to stop what a killed run left behind.

Used by tests/integration/harness.py (which adds what only the tests need) and
bench/benchlib.py (which adds the measurements).

Environment:
  KM_BUILD_DIR      where kafka-mailer and the mailer-* tools are (default: <repo>/build)
  KM_TEST_TMPDIR    base folder for the run's folder (default: /dev/shm when writable,
                    since file creation in /tmp is slow on some machines, else the system
                    tmp); a benchmark sets its own run folder instead (set_run_root)
"""

from __future__ import annotations

import atexit
import email
import email.policy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "deploy" / "local"
SYSTEM_PYTHON = "/usr/bin/python3"  # has Debian's python3-aiosmtpd
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"

KAFKA_START_TIMEOUT = 240  # the first start on a machine also downloads the jars
PROC_STOP_TIMEOUT = 30
TOOL_TIMEOUT = 120


class StackError(Exception):
    """A process of the stack did not start, a command failed or a wait timed out."""


class Timeout(StackError, TimeoutError):
    pass


class CommandFailed(StackError, AssertionError):
    pass


class StartFailed(StackError, RuntimeError):
    pass


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
    it, with the pids/ records of the processes started."""
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


def set_run_root(path: Path) -> None:
    """Makes @path (an existing folder) the run's folder instead of a new one."""
    global _run_root
    _run_root = Path(path)


def existing_run_root() -> Optional[Path]:
    """The run's folder if anything created or set it, else None."""
    return _run_root


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
            raise Timeout(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float, proc: Optional["Proc"] = None,
              host: str = "127.0.0.1") -> None:
    """Waits until host:port accepts a connection (Timeout after timeout seconds;
    StartFailed when proc, the process that should listen there, exits first)."""
    def ready():
        if proc is not None and not proc.alive():
            raise StartFailed(f"{proc.name} (pid {proc.pid}) exited ({proc.returncode}) "
                              f"before {host}:{port} opened")
        return port_open(port, host)
    wait_for(ready, timeout, f"{host}:{port} to open")


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
        self.started_at = time.time()
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
            raise Timeout(f"{self.name} (pid {self.pid}) still running after "
                               f"{timeout:.1f}s") from None

    def stop(self, timeout: float = PROC_STOP_TIMEOUT, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (or sig), wait up to timeout, then SIGKILL. Returns the exit status."""
        try:
            if self.alive():
                os.kill(self.pid, sig)
                try:
                    return self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    print(f"kmstack: {self.name} pid {self.pid} ignored signal {sig} for "
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
            print(f"kmstack: stopping {p.name} pid {p.pid}: {e}", file=sys.stderr)


atexit.register(stop_all)


def run(argv: Sequence[str], timeout: float = TOOL_TIMEOUT, input: Optional[bytes] = None,
        env: Optional[dict] = None, check: bool = False,
        cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Runs a command to completion (bounded), capturing stdout and stderr as text;
    with check, an exit status other than 0 raises CommandFailed."""
    full_env = dict(os.environ)
    if env:
        full_env.update({k: str(v) for k, v in env.items()})
    argv = [str(a) for a in argv]
    try:
        r = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, env=full_env,
                           cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise Timeout(f"{' '.join(argv)}: no exit after {timeout}s; stderr: "
                           f"{(e.stderr or b'').decode(errors='replace')[-2000:]}") from None
    res = subprocess.CompletedProcess(argv, r.returncode,
                                      r.stdout.decode(errors="replace"),
                                      r.stderr.decode(errors="replace"))
    if check and res.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} exited {res.returncode}\n"
                             f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-4000:]}")
    return res




# --- Kafka -----------------------------------------------------------------------------

def kafka_start_argv(dir, port, version: Optional[str] = None,
                     props: Sequence[str] = (), sasl_ssl: bool = False,
                     scram_users: Sequence[str] = ()) -> list:
    """deploy/local/kafka-start for @version (default kafka-start's: KM_KAFKA_VERSION,
    else 4.4.0) with broker settings @props (KEY=VALUE, later ones win); with @sasl_ssl a
    SASL_SSL listener, SCRAM users "admin" and @scram_users (NAME:PASSWORD) and ACLs."""
    argv = [LOCAL / "kafka-start"]
    if version:
        argv += ["--version", version]
    for prop in props:
        argv += ["--set", prop]
    if sasl_ssl:
        argv.append("--sasl-ssl")
        for user in scram_users:
            argv += ["--scram-user", user]
    return argv + [dir, port]


def make_ca(dir: Path, name: str = "ca") -> Path:
    """A throw-away CA certificate (@dir/@name.pem, its key beside it), e.g. one a broker
    certificate was not signed by."""
    dir.mkdir(parents=True, exist_ok=True)
    pem = dir / f"{name}.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
         dir / f"{name}.key", "-out", pem, "-days", "2", "-subj", f"/CN={name}"],
        timeout=60, check=True)
    return pem


class Kafka:
    """A single-node Apache Kafka started with deploy/local/kafka-start in its own folder
    and stopped with deploy/local/kafka-stop (by the pid file kafka-start wrote there)."""

    def __init__(self, bootstrap: str, dir: Optional[Path] = None,
                 version: Optional[str] = None, props: Sequence[str] = (),
                 sasl_ssl: bool = False, scram_users: Sequence[str] = ()):
        self.bootstrap = bootstrap
        self.dir = dir
        self.port = int(bootstrap.rsplit(":", 1)[1])
        self.version = version
        self.props = tuple(props)
        self.sasl_ssl = sasl_ssl
        self.scram_users = tuple(scram_users)

    @classmethod
    def start(cls, dir: Path, version: Optional[str] = None, props: Sequence[str] = (),
              timeout: float = KAFKA_START_TIMEOUT,
              broker_wait: Optional[float] = None, sasl_ssl: bool = False,
              scram_users: Sequence[str] = ()) -> "Kafka":
        """A broker of @version with broker settings @props (KEY=VALUE) in @dir, on a
        free port; kafka-start is bounded by @timeout seconds and waits @broker_wait
        seconds for the broker (KAFKA_START_TIMEOUT; default kafka-start's). With
        @sasl_ssl: SASL_SSL, SCRAM-SHA-512 users admin and @scram_users (NAME:PASSWORD),
        the StandardAuthorizer (see client_config, acl)."""
        env = {"KAFKA_START_TIMEOUT": int(broker_wait)} if broker_wait else None
        last = ""
        for _ in range(3):  # a port picked free can be taken before the broker binds it
            port = free_port()
            r = run(kafka_start_argv(dir, port, version, props, sasl_ssl, scram_users),
                    timeout=timeout, env=env)
            if r.returncode == 0:
                return cls(r.stdout.strip().splitlines()[-1], dir, version, props,
                           sasl_ssl, scram_users)
            last = r.stderr
        raise StartFailed(f"kafka-start failed:\n{last[-4000:]}")

    @property
    def ca_file(self) -> Optional[Path]:
        """The CA a SASL_SSL broker's certificate is signed by."""
        return self.dir / "tls" / "ca.pem" if self.sasl_ssl and self.dir else None

    @property
    def admin_properties(self) -> Optional[Path]:
        """A SASL_SSL broker's super user settings as a librdkafka properties file."""
        return self.dir / "admin.properties" if self.sasl_ssl and self.dir else None

    def client_config(self, user: str = "admin", password: Optional[str] = None,
                      ca: Optional[Path] = None) -> dict:
        """librdkafka settings for a SASL_SSL broker as @user (admin's password is
        kafka-start's; another user's is @password), trusting @ca (default: the
        broker's CA). {} for a plain broker."""
        if not self.sasl_ssl:
            return {}
        if password is None:
            assert user == "admin", "a password for a user other than admin"
            password = (self.dir / "tls" / "admin.password").read_text().strip()
        return {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": user, "sasl.password": password,
                "ssl.ca.location": str(ca or self.ca_file)}

    @property
    def tool_args(self) -> list:
        """The tools' arguments that let them in as admin ([] for a plain broker)."""
        args = []
        for k, v in self.client_config().items():
            args += ["-X", f"{k}={v}"]
        return args

    def acl(self, action: str, principal: str, resource: str, *operations: str,
            timeout: float = 90) -> None:
        """deploy/local/kafka-acl: @action add or remove, for @principal
        ("User:NAME"), on @resource ("topic:NAME", "group:NAME", "cluster"),
        @operations ("READ", "DESCRIBE", ...); returns once the broker applied it."""
        assert self.sasl_ssl and self.dir is not None
        run([LOCAL / "kafka-acl", self.dir, action, principal, resource, *operations],
            timeout=timeout, check=True)

    @property
    def pid(self) -> Optional[int]:
        try:
            return int((self.dir / "kafka.pid").read_text()) if self.dir else None
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, timeout: float = 60) -> None:
        if self.dir is not None:
            run([LOCAL / "kafka-stop", self.dir], timeout=timeout)

    def restart(self) -> subprocess.CompletedProcess:
        """Starts the stopped broker again on its folder and port (its data kept)."""
        assert self.dir is not None
        return run(kafka_start_argv(self.dir, self.port, self.version, self.props,
                                    self.sasl_ssl, self.scram_users),
                   timeout=KAFKA_START_TIMEOUT)

    def log_tail(self, n: int = 40) -> str:
        if self.dir is None:
            return ""
        try:
            return "\n".join((self.dir / "kafka.log").read_text(errors="replace")
                             .splitlines()[-n:])
        except FileNotFoundError:
            return ""


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
        raise StartFailed(f"capture-server did not start:\n{last[-4000:]}")

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


class PostfixServer:
    """A private Postfix instance, a real MTA (its smtpd offers PIPELINING, CHUNKING,
    SMTPUTF8, 8BITMIME, SIZE), on 127.0.0.1 at a free port; it relays everything it
    accepts to 127.0.0.1:@relay_port (e.g. a CaptureServer). Recipients in
    @refuse_domains are refused at RCPT with "550 5.1.1". Its own folder is under /tmp
    (its daemons run as the postfix user and must reach it); its master runs in the
    foreground (master -d) as a Proc, stopped by pid, and the folder goes with it.
    Starting Postfix needs root."""

    MASTER = "/usr/lib/postfix/sbin/master"

    def __init__(self, proc: Proc, port: int, base: Path):
        self.proc = proc
        self.port = port
        self.base = base

    @classmethod
    def start(cls, relay_port: int, refuse_domains: Sequence[str] = (),
              timeout: float = 30) -> "PostfixServer":
        if os.geteuid() != 0:
            raise StartFailed("a private Postfix instance needs root")
        base = Path(tempfile.mkdtemp(prefix="km-postfix-", dir="/tmp"))
        base.chmod(0o755)
        etc, data = base / "etc", base / "data"
        etc.mkdir()
        (base / "queue").mkdir()
        data.mkdir(mode=0o700)
        shutil.chown(data, "postfix")
        port = free_port()
        refuse = ""
        if refuse_domains:
            refuse = ("check_recipient_access inline:{" + ", ".join(
                f"{{{d} = 550 5.1.1 refused by the test}}" for d in refuse_domains) + "}, ")
        (etc / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {data}
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
myhostname = mta.localhost
mydomain = localhost
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtpd_relay_restrictions = {refuse}permit_mynetworks, reject
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
""")
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            f = line.split()
            if not line[:1].strip() or line.startswith("#") or len(f) < 8:
                lines.append(line)
                continue
            if f[0] == "smtp" and f[1] == "inet":
                f[0] = f"127.0.0.1:{port}"
            f[4] = "n"  # no chroot: nothing is copied into the queue folder
            lines.append(" ".join(f))
        (etc / "master.cf").write_text("\n".join(lines) + "\n")
        try:
            run(["postfix", "-c", etc, "check"], check=True, timeout=60)
            proc = Proc([cls.MASTER, "-c", etc, "-d"], f"postfix-{port}",
                        make_tmpdir("postfix"))
        except Exception:
            shutil.rmtree(base, ignore_errors=True)
            raise
        mta = cls(proc, port, base)

        def listening():
            if not proc.alive():
                raise StartFailed(f"postfix master exited: {proc.log_tail()}\n"
                                  f"{mta.maillog()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        try:
            wait_for(listening, timeout, "postfix listening")
        except Exception:
            mta.stop()
            raise
        return mta

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def maillog(self) -> str:
        try:
            return (self.base / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def smtpd_commands(self) -> "dict":
        """Sums, over the smtpd sessions that ended, the commands each "disconnect from"
        line counts as accepted (mail=, rcpt=, data=, bdat=, ...; "rcpt=1/2" is one
        accepted of two): {"bdat": 120, ...}."""
        out: dict = {}
        for line in self.maillog().splitlines():
            if "postfix/smtpd" not in line or " disconnect from " not in line:
                continue
            for word in line.split():
                name, eq, value = word.partition("=")
                if eq and name.isalpha():
                    n = value.split("/")[0]
                    if n.isdigit():
                        out[name] = out.get(name, 0) + int(n)
        return out

    def stop(self) -> int:
        try:
            return self.proc.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


class SmtpSink:
    """Postfix's smtp-sink on a free port (accepts and discards): as nobody when run as
    root, with @options (default: a counter on stdout and at most 1024 sessions), then
    fault options in @extra (e.g. ["-W", ".:1"] to delay the final reply by 1 s) and
    the listen @backlog."""

    def __init__(self, proc: Proc, port: int):
        self.proc = proc
        self.port = port

    @classmethod
    def start(cls, extra: Sequence[str] = (), logdir: Optional[Path] = None,
              timeout: float = 15, port: Optional[int] = None,
              options: Sequence[str] = ("-c", "-m", "1024"),
              backlog: int = 1024) -> "SmtpSink":
        """port: listen on this port instead of a free one."""
        logdir = logdir or make_tmpdir("sink")
        fixed_port = port
        last = ""
        for _ in range(3):
            port = fixed_port or free_port()
            argv = [SMTP_SINK]
            if os.geteuid() == 0:
                argv += ["-u", "nobody"]
            argv += [*options, *extra, f"127.0.0.1:{port}", str(backlog)]
            proc = Proc(argv, f"smtp-sink-{port}", logdir)
            try:
                wait_port(port, timeout, proc)
                return cls(proc, port)
            except StartFailed:
                last = proc.log()
                proc.stop()
            except Timeout:
                proc.kill()
                raise
            if fixed_port:
                time.sleep(0.5)
        raise StartFailed(f"smtp-sink did not start:\n{last[-2000:]}")

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> int:
        return self.proc.stop(timeout=10)

# --- the worker --------------------------------------------------------------------------

class Worker:
    """A kafka-mailer process: `kafka-mailer -c CONFIG -X key=value...`.

    config is written as a properties file; overrides become -X arguments; the program
    is @binary (default: KM_BUILD_DIR's kafka-mailer). stderr (the log) goes to
    .log_path. stop() = SIGTERM and a bounded wait (the drain),
    kill() = SIGKILL (a crash), restart() = a new process with the same settings."""

    _n = 0

    def __init__(self, config: dict, overrides: Optional[dict] = None,
                 workdir: Optional[Path] = None, name: Optional[str] = None,
                 env: Optional[dict] = None, args: Sequence[str] = (),
                 binary: Optional[Path] = None):
        Worker._n += 1
        self.name = name or f"worker{Worker._n}"
        self.workdir = workdir or make_tmpdir(self.name)
        self.config = dict(config)
        self.overrides = dict(overrides or {})
        self.env = dict(env or {})
        self.args = list(args)
        self.binary = binary
        self.config_path = self.workdir / f"{self.name}.properties"
        self.proc: Optional[Proc] = None
        self.starts = 0

    def write_config(self) -> None:
        lines = ["# written by tests/lib/kmstack.py"]
        for k, v in self.config.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            lines.append(f"{k}={v}")
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.config_path)

    def argv(self) -> list:
        argv = [self.binary or binary("kafka-mailer"), "-c", self.config_path]
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


