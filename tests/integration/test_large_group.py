"""A group at a larger size: 32 workers on 128 partitions under steady load (300
requests a second), a scale-up from 16 to 32, a rolling restart of all 32 (SIGTERM one
every 2 s, restart it), then all 32 stopped at the same moment.

It takes several minutes and runs in the long mode of the tests only (tests/run --long,
under both group protocols), not in every CI run.
"""

import datetime
import json
import subprocess
import time
from pathlib import Path

import pytest

from harness import Topics, binary, captured_mids
from test_faults import assert_all_sent_once_or_more, cfg

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools, pytest.mark.slow,
              pytest.mark.long]

PARTITIONS = 128
RATE = 300
SECONDS = 150
N = RATE * SECONDS


def delivery_times(folder) -> list:
    """Unix seconds at which the capture server stored each message, sorted."""
    out = []
    for meta in Path(folder).glob("[0-9]*.json"):
        at = json.loads(meta.read_text())["received_at"]
        out.append(datetime.datetime.fromisoformat(at).timestamp())
    return sorted(out)


def test_32_workers_scale_up_rolling_restart_and_stop_together(kafka, capture_server,
                                                               worker):
    topics = Topics.new(partitions=PARTITIONS).create(kafka)
    server = capture_server()
    conf = cfg(kafka, topics, server.url, inflight_max=200, smtp_sessions_max=2)
    names = [f"w{i:02d}" for i in range(32)]
    ws = {n: worker(conf, {"worker.id": n}, name=n) for n in names[:16]}
    for w in ws.values():
        w.wait_log("results read at assignment", timeout=120)

    load = subprocess.Popen(
        [binary("mailer-loadgen"), "-b", kafka.bootstrap, "-t", topics.requests,
         "-n", str(N), "--rate", str(RATE), "--id-prefix", "large"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load_start = time.time()
    try:
        time.sleep(15)
        for n in names[16:]:  # scale-up 16 -> 32
            ws[n] = worker(conf, {"worker.id": n}, name=n)
        for n in names[16:]:
            ws[n].wait_log("results read at assignment", timeout=120)
        time.sleep(10)
        exits = {}
        for n in names:  # rolling restart
            t0 = time.monotonic()
            rc = ws[n].stop(timeout=60)
            exits[n] = round(time.monotonic() - t0, 1)
            assert rc == 0, f"{n} exit {rc}\n{ws[n].log_tail()}"
            ws[n].start()
            time.sleep(2)
        assert load.wait(timeout=SECONDS + 120) == 0, load.stderr.read()[-2000:]
        load_end = time.time()
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()

    a = kafka.wait_audit(topics, N, capture_dir=server.dir, timeout=300)
    time.sleep(1)
    a = kafka.audit(topics, capture_dir=server.dir)
    assert_all_sent_once_or_more(a, N)
    repeats = sum(c - 1 for c in captured_mids(server.dir).values())

    times = [t for t in delivery_times(server.dir) if load_start + 5 <= t <= load_end]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Delivery per 5 s window while the load flowed.
    windows = {}
    for t in times:
        windows[int((t - load_start) // 5)] = windows.get(int((t - load_start) // 5), 0) + 1
    lowest = min(windows.get(i, 0) for i in range(1, int((load_end - load_start) // 5)))

    # Everyone stops at the same moment: each exits 0 within shutdown.timeout.ms.
    t0 = time.monotonic()
    for w in ws.values():
        w.send_signal(15)
    rcs = {n: w.wait(timeout=60) for n, w in ws.items()}
    together = time.monotonic() - t0
    print(f"repeated sends={repeats}; longest gap while loaded={max(gaps):.2f}s; lowest "
          f"5 s window={lowest} ({lowest / 5:.0f}/s of {RATE}); SIGTERM to exit "
          f"(rolling)={sorted(exits.values())}; all stopped together in {together:.1f}s")
    assert repeats == 0, {m: c for m, c in captured_mids(server.dir).items() if c > 1}
    assert max(gaps) < 5, f"a {max(gaps):.1f}s window with no delivery"
    assert max(exits.values()) <= 31, exits
    assert all(rc == 0 for rc in rcs.values()), rcs
    assert together <= 31, together
    for n, w in ws.items():
        assert "Assertion" not in w.all_logs(), f"{n}:\n{w.log_tail()}"
    kafka.wait_committed(topics.group, topics.requests, timeout=60)
