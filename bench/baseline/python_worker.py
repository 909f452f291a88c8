#!/usr/bin/env python3
"""A baseline email worker, written the way most teams would write one.

It consumes JSON requests (wire format v1, docs/wire-format.md) from a Kafka
topic and sends each one with smtplib from a thread pool, opening one SMTP
connection per email, and commits the request's offset after each send. It is
the "Python worker" kafka-mailer is compared with in bench/b1-throughput; it
is not meant for production (no retries, no results topic, no dead letters,
and committing out of order can skip a request that is still being sent).

    python_worker.py --bootstrap HOST:PORT --topic T --group G \
                     --smtp HOST:PORT [--threads 16]

Needs confluent-kafka (or, failing that, kafka-python); the bench script
installs it into bench/.venv. Logs go to stderr in the worker's format
(logfmt: 'ts=... level=info msg="partitions assigned" ...') so the bench can read the
time of the first assignment the same way for both workers. SIGTERM or SIGINT
stops it after the sends in flight.
"""
import argparse
import concurrent.futures
import datetime
import json
import queue
import signal
import smtplib
import sys
import threading
from email.message import EmailMessage

try:
    import confluent_kafka as ck
except ImportError:  # pragma: no cover - fallback client
    ck = None


def _logfmt_value(v):
    v = str(v)
    if v and not any(c in v for c in ' "=\\') and v.isprintable():
        return v
    return '"' + "".join("?" if not c.isprintable() else c for c in v).replace(
        "\\", "\\\\").replace('"', '\\"') + '"'


def log(msg, **fields):
    now = datetime.datetime.now(datetime.timezone.utc)
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    kv = "".join(f" {k}={_logfmt_value(v)}" for k, v in fields.items())
    print(f"ts={ts} level=info msg={_logfmt_value(msg)}{kv}", file=sys.stderr, flush=True)


def build_message(req):
    msg = EmailMessage()
    msg["From"] = req["from"]
    if req.get("to"):
        msg["To"] = ", ".join(req["to"])
    if req.get("cc"):
        msg["Cc"] = ", ".join(req["cc"])
    msg["Subject"] = req.get("subject", "")
    msg["Message-ID"] = "<%s@%s>" % (req["id"], req["from"].rsplit("@", 1)[-1].rstrip(">"))
    msg.set_content(req.get("text") or "")
    if req.get("html"):
        msg.add_alternative(req["html"], subtype="html")
    rcpts = [a.rsplit("<", 1)[-1].rstrip(">") for a in
             req.get("to", []) + req.get("cc", []) + req.get("bcc", [])]
    sender = req["from"].rsplit("<", 1)[-1].rstrip(">")
    return sender, rcpts, msg


def send(req, smtp_host, smtp_port):
    sender, rcpts, msg = build_message(req)
    with smtplib.SMTP(smtp_host, smtp_port, timeout=60) as s:
        s.send_message(msg, from_addr=sender, to_addrs=rcpts)


class Committer:
    """Commits offset+1 after each send, from the thread that polls (the
    consumer is used from one thread only, as its documentation advises):
    the pool threads queue what they finished and the poll loop commits it.
    A partition never moves backwards (threads finish out of order), so the
    group's lag reaches 0 at the end."""

    def __init__(self, commit):
        self._commit = commit
        self._queue = queue.SimpleQueue()
        self._done = {}

    def done(self, topic, partition, offset):
        self._queue.put((topic, partition, offset))

    def commit_finished(self):
        while True:
            try:
                topic, partition, offset = self._queue.get_nowait()
            except queue.Empty:
                return
            key = (topic, partition)
            if self._done.get(key, -1) >= offset + 1:
                continue
            self._done[key] = offset + 1
            self._commit(topic, partition, offset + 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--smtp", required=True, help="HOST:PORT")
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args()
    smtp_host, smtp_port = args.smtp.rsplit(":", 1)
    smtp_port = int(smtp_port)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    counts = {"sent": 0, "failed": 0}
    counts_lock = threading.Lock()
    # Bounded hand-off: at most 2 requests waiting per thread.
    slots = threading.Semaphore(args.threads * 2)

    if ck is not None:
        consumer = ck.Consumer({
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })

        def on_assign(c, parts):
            log("partitions assigned", count=len(parts))

        consumer.subscribe([args.topic], on_assign=on_assign)

        def commit(topic, partition, offset):
            # The client's default (asynchronous) commit. Commits from the
            # pool threads were tried first: with confluent-kafka 2.16 they
            # sometimes stalled until the consumer closed.
            consumer.commit(offsets=[ck.TopicPartition(topic, partition, offset)])

        def poll():
            m = consumer.poll(0.1)
            if m is None or m.error():
                return None
            return m.topic(), m.partition(), m.offset(), m.value()
    else:
        import kafka  # kafka-python

        consumer = kafka.KafkaConsumer(
            bootstrap_servers=args.bootstrap, group_id=args.group,
            enable_auto_commit=False, auto_offset_reset="earliest")

        class Listener(kafka.ConsumerRebalanceListener):
            def on_partitions_assigned(self, assigned):
                log("partitions assigned", count=len(assigned))

            def on_partitions_revoked(self, revoked):
                pass

        consumer.subscribe([args.topic], listener=Listener())

        def commit(topic, partition, offset):
            consumer.commit({kafka.TopicPartition(topic, partition):
                             kafka.OffsetAndMetadata(offset, None)})

        buffered = []

        def poll():
            if not buffered:
                for recs in consumer.poll(100).values():
                    buffered.extend(recs)
            if not buffered:
                return None
            r = buffered.pop(0)
            return r.topic, r.partition, r.offset, r.value

    committer = Committer(commit)

    def handle(topic, partition, offset, value):
        try:
            send(json.loads(value), smtp_host, smtp_port)
            with counts_lock:
                counts["sent"] += 1
        except Exception as e:  # a failed send is logged and committed anyway
            with counts_lock:
                counts["failed"] += 1
            log("send failed", offset=offset, error=repr(e))
        finally:
            committer.done(topic, partition, offset)
            slots.release()

    log("started", threads=args.threads,
        client="confluent-kafka" if ck else "kafka-python")
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.threads) as pool:
        while not stop.is_set():
            committer.commit_finished()
            m = poll()
            if m is None:
                continue
            while not slots.acquire(timeout=0.05):
                committer.commit_finished()
                if stop.is_set():
                    break
            else:
                pool.submit(handle, *m)
    committer.commit_finished()
    consumer.close()
    log("stopped", sent=counts["sent"], failed=counts["failed"])


if __name__ == "__main__":
    main()
