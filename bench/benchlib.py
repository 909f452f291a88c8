"""Shared helpers for the benchmarks in bench/ (standard library only).

The processes (Kafka, smtp-sink, workers, tools) are started, waited for and
stopped by tests/lib/kmstack.py, which the integration tests use too. A
benchmark script creates a Run, which owns a directory under bench/.run/
(kmstack's run folder: logs, and the pids/ records) and every process it
starts; Run.close() (also on exit and on SIGINT/SIGTERM) stops them by their
PID. Nothing here kills by name.

Pieces:
- build(): configures and builds the release tree (only the targets the
  benchmarks need) and snapshots the binaries into the run directory, so a
  rebuild by someone else in the middle of a run cannot change them.
- Run.start_kafka(), Run.start_sink(), Run.start_worker(),
  Run.start_process(), Run.stop(): kmstack's Kafka, SmtpSink, Worker and Proc
  on 127.0.0.1 and free ports, with the run's binaries.
- wait_committed(): `mailer-admin offsets GROUP TOPIC --wait` until the lag is
  0; with first_assigned() (the worker log's first "partitions assigned"
  timestamp) it gives "time from first consume to last offset committed".
- peak_rss_kib() (VmHWM) and cpu_seconds() of a process.
- ensure_venv(): bench/.venv with confluent-kafka (kafka-python as a fallback)
  for the Python baseline.
- ensure_node(): bench/.node/node_modules (`npm ci` of
  bench/baseline/package-lock.json) for the Node.js peer of B1 --peers.
"""
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "lib"))
import kmstack as ks  # noqa: E402

BENCH = ROOT / "bench"
SMTP_SOURCE = ks.SMTP_SOURCE
TARGETS = ["kafka-mailer", "mailer-admin", "mailer-loadgen", "mailer-results"]

# What a benchmark that cannot run raises: its own failures and the stack's (a
# process that did not start, a command that failed, a wait that timed out).
BenchError = ks.StackError


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def run(cmd, timeout, check=True, **kw):
    """kmstack.run() (bounded, text stdout/stderr) that by default raises when
    the command fails."""
    return ks.run(cmd, timeout, check=check, **kw)


def build(build_dir=None, targets=TARGETS):
    """Configures (release preset) if needed and builds only @targets.
    Only the named targets: other targets of the tree need not build."""
    build_dir = Path(build_dir) if build_dir else ROOT / "build-release"
    presets = {"build-release": "release", "build-release-debian": "release-debian"}
    if not (build_dir / "build.ninja").exists():
        preset = presets.get(build_dir.name)
        if preset is None or build_dir.resolve() != (ROOT / build_dir.name).resolve():
            raise BenchError("%s is not configured" % build_dir)
        log("configuring the %s build" % preset)
        if preset == "release":
            run([ks.LOCAL / "librdkafka-build"], 900, cwd=ROOT)
        run(["cmake", "--preset", preset], 600, cwd=ROOT)
    log("building %s in %s" % (" ".join(targets), build_dir))
    run(["cmake", "--build", build_dir, "--target"] + list(targets), 1200, cwd=ROOT)
    return build_dir


def machine_description():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return "%d cores (%s), %.0f GiB RAM, Linux %s" % (
        os.cpu_count() or 0, model, mem_kib / 1048576, platform.release())


def git_description():
    try:
        head = run(["git", "rev-parse", "--short", "HEAD"], 10, cwd=ROOT).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--", "consumer", "producer-tools"],
                    10, cwd=ROOT).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except BenchError:
        return "?"


def iso_to_epoch(ts):
    """'2026-11-28T01:04:00.498Z' -> seconds since the epoch."""
    dt = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


# Quoted since the logs are logfmt; bare in builds before that (--compare-build).
_ASSIGNED = re.compile(r'^ts=(\S+Z) level=\w+ msg="?partitions assigned')


def first_assigned(log_path):
    """@returns the epoch time of the first "partitions assigned" line of a
    worker log (kafka-mailer's format), or None."""
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                m = _ASSIGNED.match(line)
                if m:
                    return iso_to_epoch(m.group(1))
    except OSError:
        pass
    return None


def read_status(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kib(pid):
    """Peak resident set size (VmHWM) of a running process, in KiB."""
    return read_status(pid, "VmHWM")


def cpu_seconds(pid):
    """User + system CPU time a running process has used, in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is the state (field 3); utime and stime are fields 14, 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


_OFFSETS_TOTAL = re.compile(r"total partitions=(\d+) end=(\d+) lag=(\d+)")


def wait_committed(admin, bootstrap, group, topic, timeout, proc=None, chunk=2.0):
    """Waits until every partition's lag is 0 with `mailer-admin offsets
    GROUP TOPIC --wait`: one client that queries every 50 ms (one process
    per @chunk seconds, so that a dead @proc and progress are noticed).
    @returns the wall-clock time (epoch) at which the query that saw lag 0
    was sent: the last commit happened before it, so durations ending there
    are upper bounds (by at most 50 ms and one query).
    Raises BenchError on timeout or when @proc exits first."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        cp = run([admin, "-b", bootstrap, "offsets", group, topic, "--timeout", "5",
                  "--wait", "%.1f" % chunk], 30 + chunk, check=False)
        if cp.returncode == 0:
            m = re.search(r"caught_up_ms=(\d+)", cp.stdout)
            if m:
                return int(m.group(1)) / 1000.0
            return time.time()
        m = _OFFSETS_TOTAL.search(cp.stdout)
        if m:
            last = "lag=%s of %s" % (m.group(3), m.group(2))
        elif cp.returncode != 3:
            last = cp.stderr.strip().splitlines()[-1:] or ["?"]
            last = "mailer-admin: " + last[0]
            time.sleep(0.1)
        if proc is not None and not proc.alive():
            raise BenchError("process %d exited (%d) before its offsets were committed (%s)"
                             % (proc.pid, proc.returncode, last))
        log("  %s: %s" % (group, last))
    raise BenchError("group %s did not commit %s in %ss (%s)" % (group, topic, timeout, last))


class Run:
    """One benchmark run: a directory and the processes started for it."""

    def __init__(self, name, keep=False):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = BENCH / ".run" / ("%s-%s-%d" % (name, stamp, os.getpid()))
        self.dir.mkdir(parents=True)
        ks.set_run_root(self.dir)
        self.keep = keep
        self.procs = []        # kmstack.Proc still to stop
        self.kafkas = []
        self.bin = self.dir / "bin"
        self._closed = False
        self.cleanups = []     # callables run by close() after the processes stop
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, sig, frame):
        raise KeyboardInterrupt("signal %d" % sig)

    def snapshot(self, build_dir, names=TARGETS, suffix=""):
        """Copies the built binaries into the run directory (name + suffix)."""
        self.bin.mkdir(exist_ok=True)
        for n in names:
            shutil.copy2(Path(build_dir) / n, self.bin / (n + suffix))
        return self.bin

    def tool(self, name):
        return self.bin / name

    # --- processes -----------------------------------------------------------
    def start_process(self, name, cmd, env=None):
        """Starts a process in its own session (a Ctrl-C on the terminal
        reaches only this script, which then stops it), stdout and stderr to
        NAME.log; @env: variables added to this one's environment.
        @returns the kmstack.Proc."""
        p = ks.Proc(cmd, name, self.dir, env=env, stdout_log=False)
        self.procs.append(p)
        return p

    def stop(self, p, timeout=20):
        """SIGTERM, then SIGKILL after @timeout seconds. @returns the exit code."""
        rc = p.stop(timeout)
        self.procs = [q for q in self.procs if q is not p]
        return rc

    def start_kafka(self, timeout=120):
        """A broker in the run directory (its own data), waited for with
        `mailer-admin wait-ready`. @returns its bootstrap address."""
        log("starting Kafka")
        k = ks.Kafka.start(self.dir / "kafka", timeout=timeout + 60, broker_wait=timeout)
        self.kafkas.append(k)
        log("Kafka on %s" % k.bootstrap)
        run([self.tool("mailer-admin"), "-b", k.bootstrap, "wait-ready", "--timeout", "60"], 90)
        return k.bootstrap

    def stop_kafka(self, k):
        k.stop(timeout=90)
        self.kafkas.remove(k)

    def start_sink(self, args=(), backlog=1024):
        """smtp-sink with @args on 127.0.0.1:<free port> (as nobody when run
        as root). @returns (kmstack.Proc, port)."""
        s = ks.SmtpSink.start(logdir=self.dir, options=args, backlog=backlog)
        self.procs.append(s.proc)
        log("smtp-sink (pid %d) on 127.0.0.1:%d" % (s.proc.pid, s.port))
        return s.proc, s.port

    def start_worker(self, name, bootstrap, smtp_url, group, topics, extra=(), binary=None):
        """kafka-mailer (or @binary) with its topics, group and relay; extra = more
        "key=value" settings. topics = (requests, results, deadletter).
        @returns the worker's kmstack.Proc."""
        req, res, dlq = topics
        settings = ["kafka.bootstrap.servers=" + bootstrap, "smtp.url=" + smtp_url,
                    "smtp.starttls=off", "topic.requests=" + req, "topic.results=" + res,
                    "topic.deadletter=" + dlq, "kafka.consumer.group.id=" + group,
                    "worker.id=" + name] + list(extra)
        w = ks.Worker({}, dict(s.split("=", 1) for s in settings), workdir=self.dir,
                      name=name, binary=binary or self.tool("kafka-mailer")).start()
        self.procs.append(w.proc)
        log("%s (pid %d) started" % (name, w.pid))
        return w.proc

    def close(self):
        if self._closed:
            return
        self._closed = True
        for p in reversed(self.procs):
            if p.alive():
                try:
                    self.stop(p, timeout=10)
                except Exception as e:  # keep stopping the others
                    log("stopping %s (pid %d): %s" % (p.name, p.pid, e))
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # keep cleaning up
                log("cleanup %s: %s" % (getattr(fn, "__name__", fn), e))
        for k in list(self.kafkas):
            self.stop_kafka(k)
        if not self.keep:
            shutil.rmtree(self.dir / "kafka" / "data", ignore_errors=True)


def ensure_venv(log_to):
    """bench/.venv with confluent-kafka (the manylinux wheel bundles
    librdkafka), or kafka-python when that cannot be installed.
    @returns (python path, client name) or (None, reason)."""
    venv = BENCH / ".venv"
    py = venv / "bin" / "python"
    check = "import confluent_kafka"
    if py.exists() and run([py, "-c", check], 30, check=False).returncode == 0:
        return py, "confluent-kafka"
    if py.exists() and run([py, "-c", "import kafka"], 30, check=False).returncode == 0:
        return py, "kafka-python"
    with open(log_to, "a") as out:
        if not py.exists():
            log("creating %s" % venv)
            r = subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], stdout=out,
                               stderr=subprocess.STDOUT, timeout=300)
            if r.returncode != 0:
                return None, "python3 -m venv failed (apt-get install python3-venv)"
        for pkg, mod, name in (("confluent-kafka", "confluent_kafka", "confluent-kafka"),
                               ("kafka-python", "kafka", "kafka-python")):
            log("pip install %s into %s" % (pkg, venv))
            try:
                subprocess.run([str(py), "-m", "pip", "install", "-q", pkg], stdout=out,
                               stderr=subprocess.STDOUT, timeout=600)
            except subprocess.TimeoutExpired:
                continue
            if run([py, "-c", "import " + mod], 30, check=False).returncode == 0:
                return py, name
    return None, "neither confluent-kafka nor kafka-python could be installed (see %s)" % log_to


def ensure_node(log_to):
    """bench/.node/node_modules with the exact kafkajs, nodemailer and lz4js of
    bench/baseline/package-lock.json (`npm ci`, run again when the lock file
    changed). The Node peer runs with NODE_PATH set to it.
    @returns (node path, NODE_PATH, "kafkajs X, nodemailer Y, lz4js Z") or
    (None, None, reason)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return None, None, "node or npm not installed (apt-get install nodejs npm)"
    src, dest = BENCH / "baseline", BENCH / ".node"
    mods = dest / "node_modules"

    def versions():
        try:
            return ", ".join("%s %s" % (m, json.loads((mods / m / "package.json").read_text())
                                        ["version"]) for m in ("kafkajs", "nodemailer", "lz4js"))
        except (OSError, ValueError, KeyError):
            return None

    lock = (src / "package-lock.json").read_bytes()
    try:
        same = (dest / "package-lock.json").read_bytes() == lock
    except OSError:
        same = False
    if same and versions() is not None:
        return node, mods, versions()
    dest.mkdir(exist_ok=True)
    for f in ("package.json", "package-lock.json"):
        shutil.copy2(src / f, dest / f)
    log("npm ci into %s" % dest)
    with open(log_to, "a") as out:
        try:
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--omit=dev"],
                               cwd=dest, stdout=out, stderr=subprocess.STDOUT, timeout=600)
        except subprocess.TimeoutExpired:
            r = None
    if r is None or r.returncode != 0 or versions() is None:
        # Installed again next time: the lock file copy no longer matches.
        (dest / "package-lock.json").unlink(missing_ok=True)
        return None, None, "npm ci failed: npm registry unreachable? (see %s)" % log_to
    return node, mods, versions()


def fmt_rate(x):
    return "-" if x is None else "{:,.0f}".format(x)


def print_table(rows, out=sys.stdout):
    """rows: lists of cells; the first row is the header. Numbers are right
    aligned."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        cells = []
        for i, c in enumerate(r):
            c = str(c)
            right = i > 0 and re.match(r"^[-\d.,x]+$", c) is not None
            cells.append(c.rjust(widths[i]) if right else c.ljust(widths[i]))
        print("  ".join(cells).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


# --- shared by B2-B6 ---------------------------------------------------------------
# (B1 above uses none of this.)

TOOLS_ALL = TARGETS + ["smtp-drive"]
SLOW_SINK_SRC = BENCH / "slow_sink.c"


def loadavg():
    """The 1, 5 and 15 minute load averages, as a string."""
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def raise_nofile():
    """Raises this process's open-file limit to the hard limit, so that
    the sinks and workers it starts (which inherit it) can hold thousands of
    sessions. @returns the new soft limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_slow_sink(run):
    """Compiles bench/slow_sink.c into the run's bin/. @returns its path."""
    run.bin.mkdir(exist_ok=True)
    out = run.bin / "slow_sink"
    cp = subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), str(SLOW_SINK_SRC)],
                        capture_output=True, text=True, timeout=120)
    if cp.returncode != 0:
        raise BenchError("cc slow_sink.c failed:\n" + cp.stderr[-2000:])
    return out


def setup(name, quick_note=None, tools=TOOLS_ALL, build_dir=None, slow_sink=True,
          keep=False):
    """The common start of a benchmark: a Run, the release build snapshotted,
    the slow sink compiled, the open-file limit raised. @returns the Run."""
    run_ = Run(name, keep=keep)
    log("run directory %s" % run_.dir)
    raise_nofile()
    bdir = build(build_dir, targets=tools)
    run_.snapshot(bdir, names=tools)
    if slow_sink:
        build_slow_sink(run_)
    return run_


def start_slow_sink(run_, delay_ms=1000, rtt_ms=0, netns=None, host="127.0.0.1", port=None,
                    chunking=False):
    """bench/slow_sink on HOST:PORT (default a free port of 127.0.0.1),
    optionally inside network namespace @netns, offering CHUNKING with
    @chunking. @returns (Popen, port)."""
    port = port or ks.free_port()
    cmd = []
    if netns:
        cmd = ["ip", "netns", "exec", netns]
    cmd += [run_.bin / "slow_sink", "--delay-ms", delay_ms, "--rtt-ms", rtt_ms]
    if chunking:
        cmd.append("--chunking")
    cmd.append("%s:%d" % (host, port))
    p = run_.start_process("slow_sink-chunking" if chunking else "slow_sink", cmd)
    ks.wait_port(port, 10, p, host)
    log("slow_sink (pid %d) on %s:%d, final-reply delay %d ms, emulated RTT %d ms%s%s"
        % (p.pid, host, port, delay_ms, rtt_ms, ", CHUNKING" if chunking else "",
           " in netns " + netns if netns else ""))
    return p, port


def sink_messages(p):
    """After a slow_sink has stopped: the message count it printed."""
    try:
        m = re.search(r"slow_sink: messages=(\d+)", open(p.log_path).read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _assigned_count(log_path):
    n = 0
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if _ASSIGNED.match(line):
                    n += 1
    except OSError:
        pass
    return n


def wait_assigned(procs, timeout=60):
    """Waits until every worker in @procs has logged "partitions assigned"
    (with several workers in one group, the last one to be assigned ends the
    rebalance), then 0.5 s more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise BenchError("%s (pid %d) exited (%d); see %s"
                                 % (p.name, p.pid, p.returncode, p.log_path))
        if all(_assigned_count(p.log_path) > 0 for p in procs):
            time.sleep(0.5)
            return
        time.sleep(0.1)
    raise BenchError("workers not assigned partitions in %ss" % timeout)


def read_results(run_, bootstrap, topic, timeout=300):
    """Every result of @topic (to its end now) as parsed JSON objects."""
    import json
    out = run([run_.tool("mailer-results"), "-b", bootstrap, "-t", topic], timeout).stdout
    res = []
    for line in out.splitlines():
        try:
            res.append(json.loads(line))
        except ValueError:
            pass
    return res


def results_summary(run_, bootstrap, topic, timeout=300):
    """`mailer-results --summary` parsed into a flat dict of ints
    (results, sent, ..., and latency_n, latency_p50, latency_p90, ...)."""
    out = run([run_.tool("mailer-results"), "-b", bootstrap, "-t", topic, "--summary"],
              timeout).stdout
    d = {"text": out.strip()}
    for line in out.splitlines():
        prefix = "latency_" if line.startswith("latency_ms") else ""
        for k, v in re.findall(r"(\w+)=(\d+)", line):
            d[prefix + k] = int(v)
    return d


def avg_value_bytes(run_, bootstrap, topic, timeout=300):
    """Average size in bytes of the values of @topic (JSON objects, as
    mailer-results prints them: unchanged when on one line)."""
    out = run([run_.tool("mailer-results"), "-b", bootstrap, "-t", topic], timeout).stdout
    lines = out.splitlines()
    return sum(len(x.encode()) for x in lines) / len(lines) if lines else None


# Completions further apart than this end a burst. Against a sink that
# delays every reply by the same second, a worker's slots complete in bursts
# about a second apart (B2, B4); a steady stream of 100 msgs/s or more has
# no such gap.
BURST_GAP_S = 0.2


def completion_stats(results, lo=0.1, hi=0.9, inflight=None):
    """From results' completed_at: first and last completion (epoch) and the
    steady rate, which leaves out the ramp-up and the tail.
    - With @inflight (the slots of a closed loop: every completion frees one
      for the next request) and at least three times that many completions:
      the rate over windows of @inflight consecutive completions, each window
      one reply cycle of every slot, averaged over the windows that start
      from the @lo fraction and end by the @hi one: @inflight / the mean
      time such a window took (steady_method "windows"). It does not depend
      on where bursts start: a window from any completion to the one
      @inflight later holds one completion of each slot whether the
      completions come in bursts a second apart or spread evenly (the
      fraction rate below counts the idle end of the first burst when the
      @lo fraction falls there, as it does at 10,000 in flight of 100,000:
      4-6 % low). Its cycles and fractions figures are kept as
      cycles_rate and fractions_rate, and the rate of each cycle (the
      windows that start in it: completions 0 to @inflight - 1, then the
      next @inflight, ...; None for one whose windows took no time) as
      cycle_rates. The first cycle so measured runs from each slot's first
      completion to its second: the first reply after the start is not in
      it.
    - Completions in bursts (gaps longer than BURST_GAP_S): the rate over the
      whole cycles from the first burst that starts at or after the @lo
      fraction of the completions to the last that starts at or before the
      @hi fraction: the completions between those two starts over the time
      between them (steady_method "cycles", steady_cycles of them).
    - Otherwise, or with fewer than two whole cycles in there: the rate
      between the @lo and @hi fractions (steady_method "fractions").
    Fractions alone would cut through bursts: a window that ends just as a
    burst begins has that burst's idle second and not its completions, one
    cycle in sixteen (6 %) at 1,000 in flight in B2. steady_count and
    steady_seconds are the completions and the time the rate is taken over
    (so that runs can be pooled)."""
    ts = sorted(iso_to_epoch(r["completed_at"]) for r in results
                if r.get("status") == "sent" and isinstance(r.get("completed_at"), str))
    if len(ts) < 10:
        return {"n": len(ts)}
    i, j = int(lo * (len(ts) - 1)), int(hi * (len(ts) - 1))
    span = ts[j] - ts[i]
    st = {"n": len(ts), "first": ts[0], "last": ts[-1],
          "steady_rate": (j - i) / span if span > 0 else None,
          "steady_method": "fractions", "steady_count": j - i, "steady_seconds": span}
    st["fractions_rate"] = st["steady_rate"]
    starts = [k for k in range(max(i, 1), j + 1) if ts[k] - ts[k - 1] > BURST_GAP_S]
    if len(starts) >= 3:
        a, b = starts[0], starts[-1]
        st.update(steady_rate=(b - a) / (ts[b] - ts[a]), steady_method="cycles",
                  steady_cycles=len(starts) - 1, steady_count=b - a,
                  steady_seconds=ts[b] - ts[a])
        st["cycles_rate"] = st["steady_rate"]
    n = len(ts)
    if inflight and n >= 3 * inflight:
        # spans[k]: the window from completion k to completion k + inflight.
        spans = [ts[k + inflight] - ts[k] for k in range(n - inflight)]
        steady = spans[int(lo * n):int(hi * n) - inflight]
        total = sum(steady)
        if total > 0:
            # Counted as completions over seconds (a window is @inflight
            # completions over its span), like the other methods, so that runs
            # measured either way pool.
            st.update(steady_rate=inflight * len(steady) / total, steady_method="windows",
                      steady_count=len(steady), steady_seconds=total / inflight,
                      steady_windows=len(steady))
        # Each cycle's rate: the windows that start within it.
        cycles = [spans[c:c + inflight] for c in range(0, len(spans), inflight)]
        st["cycle_rates"] = [inflight * len(w) / sum(w) if sum(w) > 0 else None
                             for w in cycles]
    return st


def worker_settings(inflight, sessions, extra=()):
    return ["inflight.max=%d" % inflight, "smtp.sessions.max=%d" % sessions] + list(extra)


def slow_point(run_, bootstrap, smtp_url, name, count, inflight, sessions, workers=1,
               partitions=8, size=1024, extra=(), timeout=None, sink=None, rate=0,
               summary=False, request_bytes=False):
    """One measured point: fresh topics NAME.requests/results/deadletter,
    @workers kafka-mailer workers in group NAME with inflight.max=@inflight
    and smtp.sessions.max=@sessions (each), started and assigned BEFORE the
    requests are produced; then @count requests of @size body bytes are
    produced with mailer-loadgen (as fast as it can) and the point ends when
    the group has committed every offset.

    @returns a dict: count, seconds (loadgen start -> all committed),
    rate (count / seconds), steady_rate, steady_method, steady_count and
    steady_seconds (from the results' completed_at: completion_stats()),
    sent, peak_rss_kib and cpu_seconds of each worker, sink_cpu (CPU seconds the sink used during the point, if @sink),
    broker_cpu (CPU seconds the run's brokers used during the point),
    loadavg at the end."""
    admin = run_.tool("mailer-admin")
    req, res, dlq = name + ".requests", name + ".results", name + ".deadletter"
    run([admin, "-b", bootstrap, "create-topics", "%s:%d" % (req, partitions),
         "%s:%d" % (res, partitions), dlq + ":1"], 60)
    settings = worker_settings(inflight, sessions, extra)
    procs = [run_.start_worker("%s-w%d" % (name, i + 1), bootstrap, smtp_url, name,
                               (req, res, dlq), settings) for i in range(workers)]
    wait_assigned(procs)
    sink_cpu0 = cpu_seconds(sink.pid) if sink is not None else None
    broker_pids = [k.pid for k in run_.kafkas if k.pid]
    broker_cpu0 = [cpu_seconds(x) for x in broker_pids]
    log("%s: %d requests%s, %d worker(s), inflight.max=%d, smtp.sessions.max=%d %s"
        % (name, count, " at %d/s" % rate if rate else "", workers, inflight, sessions,
           " ".join(extra)))
    t0 = time.time()
    lg = run_.start_process(name + "-loadgen", [
        run_.tool("mailer-loadgen"), "-b", bootstrap, "-t", req, "-n", count, "--size", size,
        "--id-prefix", name, "--rate", rate])
    if timeout is None:
        timeout = 60 + 3.0 * count / max(1, min(inflight, sessions) * workers)
    # The topic is empty until loadgen has produced (lag 0 at once): wait for
    # it first (it is fast), then for the commits.
    try:
        lg.wait(60 + (count / rate if rate else count / 2000))
    except TimeoutError:
        raise BenchError("mailer-loadgen did not finish (see %s)" % lg.log_path)
    run_.stop(lg)
    if lg.returncode != 0:
        raise BenchError("mailer-loadgen exited %d (see %s)" % (lg.returncode, lg.log_path))
    end = wait_committed(admin, bootstrap, name, req, timeout)
    point = {"name": name, "count": count, "inflight": inflight, "sessions": sessions,
             "workers": workers, "extra": list(extra), "seconds": round(end - t0, 3),
             "rate": count / (end - t0),
             "peak_rss_kib": [peak_rss_kib(p.pid) for p in procs],
             "cpu_seconds": [cpu_seconds(p.pid) for p in procs],
             "loadavg": loadavg()}
    if sink is not None and sink_cpu0 is not None:
        c = cpu_seconds(sink.pid)
        point["sink_cpu"] = None if c is None else round(c - sink_cpu0, 2)
    if broker_pids and None not in broker_cpu0:
        c = [cpu_seconds(x) for x in broker_pids]
        if None not in c:
            point["broker_cpu"] = round(sum(c) - sum(broker_cpu0), 2)
    for p in procs:
        rc = run_.stop(p)
        if rc not in (0, None):
            log("  %s exited %d (see %s)" % (p.name, rc, p.log_path))
    results = read_results(run_, bootstrap, res)
    with open(os.path.join(run_.dir, name + "-results.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    st = completion_stats(results, inflight=min(inflight, sessions) * workers)
    point["sent"] = st["n"]
    point["steady_rate"] = st.get("steady_rate")
    for k in ("steady_method", "steady_cycles", "steady_count", "steady_seconds",
              "steady_windows", "cycles_rate", "fractions_rate", "cycle_rates"):
        if k in st:
            point[k] = st[k]
    if st["n"] != count:
        log("  WARNING: %d of %d requests sent" % (st["n"], count))
        point["warning"] = "%d of %d sent" % (st["n"], count)
    if summary:
        point["summary"] = results_summary(run_, bootstrap, res)
    if request_bytes:
        point["request_bytes"] = avg_value_bytes(run_, bootstrap, req)
    log("  %s: %.2f s, %s msgs/s end to end, %s msgs/s steady, peak RSS %s MiB, load %s"
        % (name, end - t0, fmt_rate(point["rate"]), fmt_rate(point["steady_rate"]),
           "/".join("%.1f" % ((k or 0) / 1024) for k in point["peak_rss_kib"]),
           point["loadavg"]))
    return point


def drive_point(run_, smtp_url, count, inflight, sessions, size=1024, pipelining=True,
                timeout=None):
    """smtp-drive (the worker's SMTP layer alone, no Kafka) against the
    sink. @returns {count, seconds, rate, sent}."""
    cmd = [run_.tool("smtp-drive"), "--url", smtp_url, "--count", count, "--inflight",
           inflight, "--sessions", sessions, "--size", size, "--starttls", "off"]
    if not pipelining:
        cmd.append("--no-pipelining")
    if timeout is None:
        timeout = 60 + 3.0 * count / max(1, min(inflight, sessions))
    cmd += ["--max-seconds", int(timeout)]
    cp = run(cmd, timeout + 30, check=False)
    m = re.search(r"sent=(\d+) .*seconds=([\d.]+) rate=([\d.]+)", cp.stdout)
    if not m:
        raise BenchError("smtp-drive failed (%d): %s %s" % (cp.returncode, cp.stdout,
                                                             cp.stderr[-1000:]))
    d = {"count": count, "sent": int(m.group(1)), "seconds": float(m.group(2)),
         "rate": float(m.group(3)), "inflight": inflight, "sessions": sessions,
         "loadavg": loadavg()}
    log("  smtp-drive %d in flight, %d sessions: %s msgs/s (%d sent), load %s"
        % (inflight, sessions, fmt_rate(d["rate"]), d["sent"], d["loadavg"]))
    return d


def finish(run_, result, ok):
    """Writes result.json; @returns the exit status."""
    import json
    (run_.dir / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if not ok:
        log("details in %s" % run_.dir)
    return 0 if ok else 1


def header(title, result):
    print("%s, %s" % (title, result["date"]))
    print("machine: %s; commit %s" % (result["machine"], result["commit"]))
    print("load average at start %s, at end %s" % (result.get("load_start", "?"),
                                                  result.get("load_end", "?")))
    print()


def new_result(name, run_):
    return {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": machine_description(), "commit": git_description(),
            "run_dir": str(run_.dir), "load_start": loadavg()}


def pf(value, floor, higher_is_better=True):
    if value is None or floor is None:
        return "-"
    return "pass" if (value >= floor if higher_is_better else value <= floor) else "FAIL"
