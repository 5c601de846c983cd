// Run graphile-worker's `run()` with a no-op task for bench/run.py.
//
//   node bench/graphile/worker.mjs '{"modulesDir": ..., "connectionString": ..., "schema": ...,
//     "concurrency": 10, "jobs": 20000, "batched": false, "localQueueSize": 1000, "reportStarts": false}'
//
// Writes one JSON object a line to stdout: {"event": "ready"} once the runner has started,
// {"event": "started", "n": ..., "t_ns": ...} per job when reportStarts is set,
// {"event": "ran", "count": ...} when the task has run `jobs` times, and
// {"event": "stopped", "max_rss_kb": ...} after the line "stop" arrives on stdin.
// t_ns comes from process.hrtime.bigint(), which reads CLOCK_MONOTONIC on Linux, the same clock
// as Python's time.perf_counter_ns(), so the parent can subtract its own timestamps.

import path from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const options = JSON.parse(process.argv[2]);
const entry = path.join(options.modulesDir, "graphile-worker", "dist", "index.js");
const { run, runMigrations, Logger } = await import(pathToFileURL(entry).href);

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

// Keep warnings and errors, drop graphile-worker's per-job info and debug lines.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    process.stderr.write(`graphile-worker ${level}: ${message}\n`);
  }
});

// Migrate in a process of its own first: graphile-worker announces a breaking migration to every
// listening worker in the database, and a worker that hears one stops.
if (options.migrateOnly) {
  await runMigrations({ connectionString: options.connectionString, schema: options.schema, logger });
  emit({ event: "migrated" });
  process.exit(0);
}

let ran = 0;
const taskList = {
  noop: async (payload) => {
    if (options.reportStarts) {
      emit({ event: "started", n: payload.n, t_ns: process.hrtime.bigint().toString() });
    }
    ran += 1;
    if (ran === options.jobs) {
      emit({ event: "ran", count: ran });
    }
  },
};

// The batching settings that graphile-worker's performance docs describe: lock and fetch up to
// localQueue.size jobs per query, and write completions and failures in batches.
const preset = options.batched
  ? {
      worker: {
        localQueue: { size: options.localQueueSize },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      },
    }
  : undefined;

const runner = await run({
  connectionString: options.connectionString,
  schema: options.schema,
  concurrency: options.concurrency,
  noHandleSignals: true,
  taskList,
  logger,
  preset,
});
emit({ event: "ready" });

// graphile-worker shuts itself down when any schema in the database gets a breaking migration
// (the "worker:migrate" notification is not scoped to a schema), for example when tests create
// schemas. Report it so that the parent retries the run instead of waiting for a timeout.
let stopping = false;
runner.promise.then(
  () => {
    if (!stopping) {
      emit({ event: "exited", reason: "the runner stopped on its own" });
      process.exit(1);
    }
  },
  (error) => {
    emit({ event: "exited", reason: String(error) });
    process.exit(1);
  },
);

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === "stop") {
    break;
  }
}
stopping = true;
await runner.stop();
emit({ event: "stopped", max_rss_kb: process.resourceUsage().maxRSS });
process.exit(0);
