#!/usr/bin/env node
// A Node.js subscriber to spark-relay's topics: kafkajs in a consumer group, values decoded
// by the Confluent Schema Registry client, and the compacted view kept in memory: the latest
// listing and account per key (a tombstone deletes the key) and every purge event.
//
//   SPARK_RELAY_KAFKA_BOOTSTRAP=127.0.0.1:9092 SPARK_RELAY_SCHEMA_REGISTRY_URL=http://127.0.0.1:8081 \
//     node subscriber.js --group my-team [--until-caught-up]
//
// --until-caught-up stops once every partition reached the end it had at the start, commits,
// and prints the view as one JSON object on stdout:
//   {"listings": {ListingKey: ModificationTimestamp}, "accounts": {Id: account}, "purges": ["listings:KEY", ...]}
'use strict';

const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs');
const { SchemaRegistry } = require('@kafkajs/confluent-schema-registry');
const { ZstdCodec } = require('zstd-codec');

// kafkajs decodes gzip only; spark-relay compresses with zstd unless SPARK_RELAY_COMPRESSION says
// otherwise. zstd-codec is WebAssembly, so it installs on every Node version.
const zstd = new Promise((resolve) => ZstdCodec.run((codec) => resolve(new codec.Streaming())));
CompressionCodecs[CompressionTypes.ZSTD] = () => ({
  compress: async (encoder) => Buffer.from((await zstd).compress(encoder.buffer, 3)),
  decompress: async (buffer) => Buffer.from((await zstd).decompress(buffer)),
});

function setting(name, fallback) {
  const value = process.env[`SPARK_RELAY_${name}`] ?? fallback;
  if (value === undefined || value === '') {
    console.error(`node-subscriber: SPARK_RELAY_${name} is not set`);
    process.exit(2);
  }
  return value;
}

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

// timestamp-micros (a long) as an ISO 8601 UTC timestamp with microseconds
function isoMicros(micros) {
  const millis = Math.floor(micros / 1000);
  const rest = String(micros - millis * 1000).padStart(3, '0');
  return new Date(millis).toISOString().replace('Z', `${rest}Z`);
}

async function main() {
  const prefix = setting('TOPIC_PREFIX', 'spark');
  const topics = { listings: `${prefix}.listings`, accounts: `${prefix}.accounts`, purges: `${prefix}.purges` };
  const untilCaughtUp = process.argv.includes('--until-caught-up');
  const kafka = new Kafka({
    clientId: 'spark-relay-node-subscriber',
    brokers: setting('KAFKA_BOOTSTRAP').split(','),
    logLevel: logLevel.WARN,
  });
  const registry = new SchemaRegistry({ host: setting('SCHEMA_REGISTRY_URL') });
  const groupId = option('group', 'node-subscriber');
  const consumer = kafka.consumer({
    groupId,
    // the same settings as every spark-relay consumer: SPARK_RELAY_KAFKA_SESSION_TIMEOUT_MS …
    sessionTimeout: Number(setting('KAFKA_SESSION_TIMEOUT_MS', '30000')),
    heartbeatInterval: Number(setting('KAFKA_HEARTBEAT_INTERVAL_MS', '3000')),
  });

  // the partitions with something left to read: their end is past this group's committed offset
  const remaining = new Map();
  const admin = kafka.admin();
  await admin.connect();
  const committed = new Map();
  for (const { topic, partitions } of await admin.fetchOffsets({ groupId, topics: Object.values(topics) })) {
    for (const { partition, offset } of partitions) committed.set(`${topic}:${partition}`, Number(offset));
  }
  for (const topic of Object.values(topics)) {
    for (const { partition, high, low } of await admin.fetchTopicOffsets(topic)) {
      const start = Math.max(committed.get(`${topic}:${partition}`) ?? -1, Number(low));
      if (start < Number(high)) remaining.set(`${topic}:${partition}`, Number(high));
    }
  }
  await admin.disconnect();

  const view = { listings: {}, accounts: {}, purges: [] };
  let done;
  const caughtUp = new Promise((resolve) => {
    done = resolve;
  });
  if (remaining.size === 0) done();

  await consumer.connect();
  await consumer.subscribe({ topics: Object.values(topics), fromBeginning: true });
  await consumer.run({
    eachBatch: async ({ batch, resolveOffset, heartbeat }) => {
      const { topic, partition } = batch;
      for (const message of batch.messages) {
        const key = message.key.toString();
        const value = message.value === null ? null : await registry.decode(message.value);
        if (topic === topics.purges) {
          view.purges.push(key);
        } else {
          const table = topic === topics.listings ? view.listings : view.accounts;
          if (value === null) delete table[key]; // a tombstone: the record is gone
          else if (topic === topics.listings) table[key] = isoMicros(value.ModificationTimestamp);
          else table[key] = JSON.parse(value.record_json);
        }
        resolveOffset(message.offset);
      }
      await heartbeat();
      // The end is the fetch's high watermark: the devstack's broker (Tansu) answers ListOffsets
      // with the last batch's base offset + 1, so that answer only tells whether anything is left.
      if (Number(batch.lastOffset()) + 1 >= Number(batch.highWatermark)) {
        remaining.delete(`${topic}:${partition}`);
        if (remaining.size === 0) done();
      }
    },
  });
  if (!untilCaughtUp) return;
  await caughtUp;
  await consumer.disconnect(); // commits what was read
  process.stdout.write(`${JSON.stringify(view)}\n`);
}

main().catch((error) => {
  console.error(`node-subscriber: ${error.stack || error}`);
  process.exit(1);
});
