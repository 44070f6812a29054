// The graphile-worker peer's task: the same work per item as damascus's refine_spec cycle and the Python peer.
//
// graphile-worker itself does the claim (get_job: SELECT ... FOR UPDATE SKIP LOCKED on its jobs table, then
// locked_at/locked_by) and the completion (complete_job: DELETE of the job) in their own transactions. Between
// them this task makes ONE HTTP call (the refine_spec prompt to the Anthropic Messages endpoint, no
// transaction open) and ONE write (the verdict into peers.tickets, guarded on state = 'new' so a second run of
// the same job cannot overwrite an accepted spec). The job payload carries what a producer would enqueue:
// the ticket id, title and body, so the task does not read the ticket back.
//
// A refused answer (sections missing or out of order) or an HTTP error throws: graphile-worker then keeps the
// job with its error and retries it later with its own backoff, which is its way of recording a failed attempt.
//
// Settings come from the environment, since graphile-worker imports the task list:
//   PEERS_LLM_URL (required), PEERS_LLM_API_KEY (default "bench").

import http from "node:http";

const PHASE = "refine_spec";
const MODEL = "claude-sonnet-4-5";
const MAX_TOKENS = 4000;
const ANTHROPIC_VERSION = "2023-06-01";
// damascus's refine_spec phase, verbatim (sql/damascus--0.1.0--0.2.0.sql), so the request is the same size.
const SYSTEM_PROMPT =
  "You turn a software ticket into an implementation spec. Answer with Markdown only, using exactly these " +
  "level-2 sections in this order: ## Summary, ## Context, ## Acceptance Criteria (a numbered list), " +
  "## TDD Plan, ## Out of Scope, ## Test Command (one shell command that runs the tests). Every section must " +
  "have content. Do not wrap the whole answer in a code fence.";
const SECTIONS = ["Summary", "Context", "Acceptance Criteria", "TDD Plan", "Out of Scope", "Test Command"];
const HTTP_TIMEOUT_MS = 60_000;

const VERDICT_SQL = `
UPDATE peers.tickets
SET state = 'specified',
    attempts = 0,
    llm_errors = 0,
    outputs = outputs || jsonb_build_object($2::text, $3::text),
    last_verdict = 'spec_ok',
    last_error = NULL,
    updated_at = now()
WHERE id = $1 AND state = 'new'`;

let target = null;
function llmTarget() {
  if (target) return target;
  const raw = process.env.PEERS_LLM_URL;
  if (!raw) throw new Error("PEERS_LLM_URL is not set");
  const u = new URL(raw);
  if (u.protocol !== "http:") throw new Error(`PEERS_LLM_URL must be http://host:port, got ${raw}`);
  target = {
    host: u.hostname,
    port: Number(u.port || 80),
    path: u.pathname.replace(/\/+$/, "") + "/v1/messages",
    apiKey: process.env.PEERS_LLM_API_KEY || "bench",
  };
  return target;
}

// One keep-alive agent per process; fakellm closes each connection after its answer, so in practice every
// call opens a new loopback connection (the Python peer's http.client does the same).
const agent = new http.Agent({ keepAlive: true });

function post(body) {
  const t = llmTarget();
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: t.host,
        port: t.port,
        path: t.path,
        method: "POST",
        agent,
        timeout: HTTP_TIMEOUT_MS,
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          "x-api-key": t.apiKey,
          "anthropic-version": ANTHROPIC_VERSION,
        },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`LLM call timed out after ${HTTP_TIMEOUT_MS} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

/** The first of SECTIONS not found, in order, among the answer's `## ` headings; null if all are. */
export function missingSection(text) {
  const headings = text
    .split("\n")
    .filter((l) => l.startsWith("## "))
    .map((l) => l.slice(3).trim().toLowerCase());
  let pos = 0;
  for (const section of SECTIONS) {
    const want = section.toLowerCase();
    while (pos < headings.length && headings[pos] !== want) pos++;
    if (pos === headings.length) return section;
    pos++;
  }
  return null;
}

export async function refine_spec(payload, helpers) {
  const { id, title, body } = payload;
  const request = JSON.stringify({
    model: MODEL,
    max_tokens: MAX_TOKENS,
    system: SYSTEM_PROMPT,
    messages: [{ role: "user", content: `Ticket #${id}: ${title}\n\n${body}` }],
  });
  const { status, text } = await post(request);
  if (status !== 200) throw new Error(`llm_error: HTTP ${status}: ${text.slice(0, 200)}`);
  const doc = JSON.parse(text);
  const answer = (doc.content || [])
    .filter((b) => b.type === "text")
    .map((b) => b.text)
    .join("");
  const missing = doc.stop_reason === "max_tokens" ? "(truncated)" : missingSection(answer);
  if (missing !== null) throw new Error(`spec_wrong: missing section: ${missing}`);
  const r = await helpers.query(VERDICT_SQL, [id, PHASE, answer]);
  if (r.rowCount !== 1) throw new Error(`ticket ${id} was not in state new: processed twice?`);
}

export const taskList = { refine_spec };
export default taskList;
