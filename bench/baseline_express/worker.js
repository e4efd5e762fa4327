'use strict';
// Baseline worker: BullMQ takes each job from Redis, does the no-op "agent" work (builds the
// AgentResult body) and POSTs it to the callback URL signed with Standard Webhooks headers, over
// keep-alive connections. A failed callback fails the job, which BullMQ retries (attempts: 3).
const crypto = require('node:crypto');
const http = require('node:http');
const { Worker } = require('bullmq');

const connection = { host: '127.0.0.1', port: Number(process.env.REDIS_PORT || 6379) };
const concurrency = Number(process.env.CONCURRENCY || 64);
const target = new URL(process.env.CALLBACK_URL || 'http://127.0.0.1:3199/callbacks');
const secret = process.env.CALLBACK_SIGNING_SECRET || 'whsec_ZGV2LWNhbGxiYWNrLXNpZ25pbmcta2V5LTAx';
const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });

function deliver(jobId, body) {
  const msgId = `result-${jobId}`;
  const ts = Math.floor(Date.now() / 1000);
  const signature = 'v1,' + crypto.createHmac('sha256', key).update(`${msgId}.${ts}.`).update(body).digest('base64');
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname,
        method: 'POST',
        agent,
        timeout: 10000,
        headers: {
          'content-type': 'application/json',
          'content-length': body.length,
          'webhook-id': msgId,
          'webhook-timestamp': String(ts),
          'webhook-signature': signature,
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode < 300 ? resolve() : reject(new Error(`callback answered ${res.statusCode}`))));
      },
    );
    req.on('timeout', () => req.destroy(new Error('callback timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

const worker = new Worker(
  'webhooks',
  async (job) => {
    const started = Date.now();
    const { event } = job.data;
    const result = {
      jobId: job.id,
      lovableProjectId: event.project_id ?? null,
      agentId: 'noop',
      status: 'completed',
      result: { summary: `noop: ${event.type}`, files_changed: [], suggestions: [] },
      executionTime: Date.now() - started,
      timestamp: new Date().toISOString(),
    };
    await deliver(job.id, Buffer.from(JSON.stringify(result)));
  },
  { connection, concurrency },
);
worker.on('ready', () => console.log('ready'));
process.on('SIGTERM', () => worker.close().then(() => process.exit(0)));
