'use strict';
// Baseline HTTP edge: Express verifies the Lovable signature (HMAC-SHA256 over "{timestamp}.{raw
// body}", 5-minute tolerance, constant-time compare), parses the JSON and enqueues it to Redis with
// BullMQ, answering 202 only once Redis has the job. The job id is derived from the delivery id
// the same way Conveyor derives it, so a repeated delivery does not make a second job.
const crypto = require('node:crypto');
const express = require('express');
const { Queue } = require('bullmq');

const port = Number(process.env.PORT || 3200);
const secret = process.env.LOVABLE_WEBHOOK_SECRET || 'dev-secret-change-me';
const connection = { host: '127.0.0.1', port: Number(process.env.REDIS_PORT || 6379) };
const queue = new Queue('webhooks', { connection });

function problem(req) {
  const ts = Number(req.get('x-lovable-timestamp'));
  if (!Number.isInteger(ts) || Math.abs(Date.now() / 1000 - ts) > 300) return 'missing or stale timestamp';
  const given = Buffer.from(req.get('x-lovable-signature') || '');
  const expected = Buffer.from(
    'sha256=' + crypto.createHmac('sha256', secret).update(`${ts}.`).update(req.body).digest('hex'),
  );
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return 'bad signature';
  return null;
}

// As the receiver derives it (conveyor.shared.ids.job_id_for_delivery, keyed with JOB_ID_SECRET),
// so the harness matches callbacks to webhooks the same way for both systems.
const jobIdKey = process.env.JOB_ID_SECRET || '';
const jobIdFor = (source, delivery) =>
  'job_' + crypto.createHmac('sha256', jobIdKey).update(`webhook\x1f${source}\x1f${delivery}`).digest('hex').slice(0, 32);

const app = express();
app.post('/api/webhooks/lovable', express.raw({ type: '*/*', limit: '1mb' }), async (req, res) => {
  if (!Buffer.isBuffer(req.body) || req.body.length === 0) return res.status(400).json({ error: 'empty body' });
  const bad = problem(req);
  if (bad) return res.status(401).json({ error: bad });
  let event;
  try {
    event = JSON.parse(req.body);
  } catch {
    return res.status(400).json({ error: 'invalid JSON' });
  }
  const jobId = jobIdFor('lovable', req.get('x-lovable-delivery') || event.id);
  try {
    await queue.add(event.type, { event, receivedAt: Date.now() }, {
      jobId,
      attempts: 3,
      backoff: { type: 'exponential', delay: 1000 },
    });
  } catch {
    return res.status(503).json({ error: 'queue unavailable' });
  }
  res.status(202).json({ job_id: jobId });
});

const server = app.listen(port, '127.0.0.1', () => console.log(`ready on ${port}`));
process.on('SIGTERM', () => server.close(() => queue.close().then(() => process.exit(0))));
