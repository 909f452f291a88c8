"""deploy/local/demo end to end, and the mail it sent seen in Mailpit's web view.

Runs the demo with --keep (its own build, Kafka, Mailpit and two workers), reads the
Mailpit URL it printed, opens that web view in headless Chromium (Debian's chromium)
and checks that the newest demo messages are listed, keeps a screenshot and the
rendered DOM in the demo's state folder, then stops what the demo left running with
its stop script. tests/run runs it as the stage `demo` (`tests/run --demo` alone):

    /usr/bin/python3 -m pytest -s tests/demo

KM_DEMO_REQUESTS sets --requests (default 300).
"""

import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "deploy" / "local" / "demo"
REQUESTS = int(os.environ.get("KM_DEMO_REQUESTS", "300"))
DEMO_TIMEOUT = 1800     # seconds: the first run also builds build-release/ and Mailpit
CHROMIUM_TIMEOUT = 90   # seconds for one Chromium run
STOP_TIMEOUT = 180      # seconds for the demo's stop script
LISTED = 50             # messages on the web view's first page (its default)
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # This machine's network is closed: no background connections or updates.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Virtual time runs until the page has loaded its messages through the API.
    "--virtual-time-budget=8000",
]


def _sigterm_to_interrupt(signum, frame):
    # tests/run's `timeout` sends SIGTERM: the finally blocks below still stop the demo.
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def chromium():
    path = shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed (deploy/local/install-deps --all installs it)")
    return path


def run_demo(args, timeout):
    """Runs the demo, echoing its output; returns (exit status, output). On timeout the
    demo gets SIGTERM (its trap stops everything it started, --keep or not)."""
    proc = subprocess.Popen([str(DEMO), *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines = []

    def pump():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            print(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        reader.join(timeout=10)
    return rc, "".join(lines)


def run_chromium(args, profile):
    """Chromium in a session of its own, killed with its children after the timeout."""
    proc = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)   # the group of the process started above
        proc.communicate()
        raise
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{err.decode()[-2000:]}"
    return out.decode("utf-8", "replace")


def api(url, path):
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return json.load(r)


def answers(url):
    try:
        with urllib.request.urlopen(url + "readyz", timeout=2):
            return True
    except OSError:
        return False


def test_demo_mail_is_listed_in_mailpit_web_view():
    state = None
    try:
        rc, out = run_demo(["--keep", "--requests", str(REQUESTS)], DEMO_TIMEOUT)
        out = re.sub(r"\x1b\[[0-9;]*m", "", out)
        m = re.search(r"state folder: (\S+)", out)
        assert m, "the demo printed no state folder"
        state = REPO / m.group(1)
        assert rc == 0, f"the demo exited {rc}"
        m = re.search(r"Mailpit web view: (http://127\.0\.0\.1:\d+/)", out)
        assert m, "the demo printed no Mailpit web view URL"
        url = m.group(1)
        assert "the Message-ID of every sent request is there, once" in out

        # What the API lists first: the newest messages, all from the demo's requests.
        requests = [json.loads(line) for line in open(state / "requests.jsonl", encoding="utf-8")]
        subjects = {r["id"]: r["subject"] for r in requests if "subject" in r}
        listing = api(url, f"api/v1/messages?limit={LISTED}")
        assert listing["total"] == REQUESTS - (10 if REQUESTS >= 100 else REQUESTS // 10)
        newest = listing["messages"]
        assert len(newest) == min(LISTED, listing["total"])
        for msg in newest:
            rid = msg["MessageID"].split("@", 1)[0]
            assert msg["Subject"] == subjects.get(rid), msg

        # The web view, rendered: every one of those subjects, and the total.
        with tempfile.TemporaryDirectory(prefix="km-chromium-") as profile:
            dom = run_chromium(["--dump-dom", url], profile)
            (state / "mailpit-web-view.html").write_text(dom, encoding="utf-8")
            shot = state / "mailpit-web-view.png"
            run_chromium(["--window-size=1400,1000", f"--screenshot={shot}", url], profile)
        print(f"\nMailpit web view: screenshot {shot}, DOM {state / 'mailpit-web-view.html'}")
        missing = [msg["Subject"] for msg in newest
                   if html.escape(msg["Subject"], quote=False) not in dom]
        assert not missing, f"{len(missing)} of {len(newest)} subjects not in the web view: " \
                            f"{missing[:5]} (DOM in {state / 'mailpit-web-view.html'})"
        total = f"{listing['total']:,}"
        assert re.search(rf"\bof\b(\s|<[^>]*>)*{re.escape(total)}\b", dom), \
            f"the web view does not show the total {total}"
        assert shot.stat().st_size > 10000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        if state is not None and (state / "stop").exists():
            subprocess.run([str(state / "stop")], cwd=REPO, timeout=STOP_TIMEOUT, check=False)
    # The stop script took Mailpit down with the rest.
    deadline = time.monotonic() + 20
    while answers(url) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not answers(url), f"Mailpit still answers at {url} after the stop script"
