#!/usr/bin/env node
// A Node.js email worker, written the way a team picking Node would write one.
//
// It consumes JSON requests (wire format v1, docs/wire-format.md) from a Kafka
// topic with KafkaJS and sends each one with nodemailer over a pooled SMTP
// transport (pool: true, maxConnections 64 by default, nodemailer's other
// defaults: 100 messages a connection), and commits the request's offset + 1
// after its send is confirmed (the relay's reply to the end of data). It is
// the Node peer of bench/b1-throughput --peers and mirrors
// bench/baseline/python_worker.py: the same request fields (id, from, to, cc,
// bcc, subject, text, html), the same headers and envelope, a failed send is
// logged and committed anyway, commits per partition never move backwards
// (sends finish out of order, so, as there, a commit can pass a request that
// is still being sent), no results topic, no retries, no dead letters. Not
// meant for production.
//
//     node node_worker.js --bootstrap HOST:PORT --topic T --group G \
//                         --smtp HOST:PORT [--max-connections 64]
//
// Packages (exact versions in package-lock.json): kafkajs, nodemailer, and
// lz4js for the LZ4-compressed batches the requests come in.
// At most 2 x max-connections requests are taken from Kafka and not yet sent
// (the Python worker's 2 per thread). kafkajs and nodemailer come from
// bench/.node/node_modules (benchlib.ensure_node(), NODE_PATH). Logs go to
// stderr in kafka-mailer's format (logfmt: 'ts=... level=info msg="partitions
// assigned" ...'), so the bench reads the time of the first assignment the same
// way for every worker. SIGTERM or SIGINT stops it after the sends in flight.
'use strict';

const { Kafka, logLevel, CompressionTypes, CompressionCodecs } = require('kafkajs');
const lz4 = require('lz4js');
const nodemailer = require('nodemailer');

// KafkaJS reads only uncompressed and gzip batches by itself; mailer-loadgen
// (like kafka-mailer's producers) writes LZ4, so the worker registers a codec:
// lz4js, pure JavaScript (the native `lz4` package behind kafkajs-lz4 needs
// node-gyp and a compiler), the LZ4 frame format Kafka uses.
CompressionCodecs[CompressionTypes.LZ4] = () => ({
  async compress(encoder) { return Buffer.from(lz4.compress(encoder.buffer)); },
  async decompress(buffer) { return Buffer.from(lz4.decompress(buffer)); },
});

function logfmtValue(v) {
  v = String(v);
  // eslint-disable-next-line no-control-regex
  if (v && !/[ "=\\\x00-\x1f\x7f]/.test(v)) return v;
  // eslint-disable-next-line no-control-regex
  return '"' + v.replace(/[\x00-\x1f\x7f]/g, '?').replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

function log(level, msg, fields = {}) {
  const kv = Object.entries(fields).map(([k, v]) => ` ${k}=${logfmtValue(v)}`).join('');
  process.stderr.write(`ts=${new Date().toISOString()} level=${level} msg=${logfmtValue(msg)}${kv}\n`);
}

function parseArgs(argv) {
  const a = { maxConnections: 64 };
  const names = { '--bootstrap': 'bootstrap', '--topic': 'topic', '--group': 'group',
                  '--smtp': 'smtp', '--max-connections': 'maxConnections' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = names[argv[i]];
    if (!k || i + 1 >= argv.length) {
      process.stderr.write('usage: node_worker.js --bootstrap HOST:PORT --topic T --group G ' +
                           '--smtp HOST:PORT [--max-connections 64]\n');
      process.exit(2);
    }
    a[k] = k === 'maxConnections' ? parseInt(argv[i + 1], 10) : argv[i + 1];
  }
  for (const k of ['bootstrap', 'topic', 'group', 'smtp']) {
    if (!a[k]) {
      process.stderr.write(`node_worker.js: --${k} is required\n`);
      process.exit(2);
    }
  }
  return a;
}

// The address inside "Name <a@b>", or the string itself (as python_worker.py).
const bare = (s) => s.split('<').pop().replace(/>+$/, '');

// nodemailer's options for one request: the headers and envelope python_worker.py gives it.
function buildMail(req) {
  const to = req.to || [], cc = req.cc || [], bcc = req.bcc || [];
  const domain = req.from.split('@').pop().replace(/>+$/, '');
  const mail = {
    from: req.from,
    subject: req.subject || '',
    messageId: `<${req.id}@${domain}>`,
    text: req.text || '',
    envelope: { from: bare(req.from), to: to.concat(cc, bcc).map(bare) },
  };
  if (to.length) mail.to = to.join(', ');
  if (cc.length) mail.cc = cc.join(', ');
  if (req.html) mail.html = req.html;
  return mail;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const [smtpHost, smtpPort] = [a.smtp.slice(0, a.smtp.lastIndexOf(':')),
                                parseInt(a.smtp.slice(a.smtp.lastIndexOf(':') + 1), 10)];
  const transport = nodemailer.createTransport({
    host: smtpHost, port: smtpPort, secure: false, ignoreTLS: true,
    pool: true, maxConnections: a.maxConnections,
  });

  const kafka = new Kafka({
    clientId: 'node-worker', brokers: [a.bootstrap], logLevel: logLevel.WARN,
    logCreator: () => ({ level, log: entry }) => {
      const { message, ...rest } = entry;
      delete rest.timestamp;
      delete rest.logger;
      log(level <= logLevel.ERROR ? 'error' : 'warn', message,
          Object.fromEntries(Object.entries(rest).map(([k, v]) =>
            [k, typeof v === 'object' ? JSON.stringify(v) : v])));
    },
  });
  const consumer = kafka.consumer({ groupId: a.group });
  consumer.on(consumer.events.CRASH, (e) => {
    if (!e.payload.restart) {
      log('error', 'consumer crashed', { error: String(e.payload.error) });
      process.exit(1);
    }
  });
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    const parts = Object.values(e.payload.memberAssignment || {})
      .reduce((n, ps) => n + ps.length, 0);
    log('info', 'partitions assigned', { count: parts });
  });

  const counts = { sent: 0, failed: 0 };
  const done = new Map();      // "topic/partition" -> highest offset + 1 committed
  const limit = 2 * a.maxConnections;
  let inflight = 0;
  let wake = null;             // resolves when a send finishes (a slot is free)
  let stopping = false;

  function commit(topic, partition, offset) {
    const key = topic + '/' + partition;
    const next = BigInt(offset) + 1n;
    if ((done.get(key) ?? -1n) >= next) return;
    done.set(key, next);
    consumer.commitOffsets([{ topic, partition, offset: next.toString() }]).catch((e) =>
      log('warn', 'commit failed', { partition, offset: next, error: e.message }));
  }

  function handle(topic, partition, offset, value) {
    let mail;
    try {
      mail = buildMail(JSON.parse(value.toString()));
    } catch (e) {
      mail = null;
      counts.failed++;
      log('info', 'send failed', { offset, error: String(e) });
    }
    const sent = mail ? transport.sendMail(mail).then(() => { counts.sent++; }, (e) => {
      counts.failed++;
      log('info', 'send failed', { offset, error: String(e) });
    }) : Promise.resolve();
    inflight++;
    sent.finally(() => {
      commit(topic, partition, offset);
      inflight--;
      if (wake) { const w = wake; wake = null; w(); }
    });
  }

  await consumer.connect();
  await consumer.subscribe({ topics: [a.topic], fromBeginning: true });
  log('info', 'started', { max_connections: a.maxConnections, client: 'kafkajs' });
  await consumer.run({
    autoCommit: false,
    eachBatchAutoResolve: false,
    eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
      for (const m of batch.messages) {
        while (inflight >= limit && !stopping) {
          await Promise.race([new Promise((r) => { wake = r; }),
                              new Promise((r) => setTimeout(r, 1000))]);
          await heartbeat();
        }
        if (stopping || !isRunning() || isStale()) return;
        handle(batch.topic, batch.partition, m.offset, m.value);
        resolveOffset(m.offset);     // fetched and handed over; the commit follows the send
      }
      await heartbeat();
    },
  });

  const stop = async () => {
    if (stopping) return;
    stopping = true;
    if (wake) wake();
    while (inflight > 0) await new Promise((r) => setTimeout(r, 20));
    await consumer.disconnect().catch(() => {});
    transport.close();
    log('info', 'stopped', { sent: counts.sent, failed: counts.failed });
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  log('error', 'fatal', { error: e.stack || String(e) });
  process.exit(1);
});
