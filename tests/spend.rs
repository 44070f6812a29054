//! Spend control over real HTTP from the stand-in: every cycle keeps the provider's usage verbatim and each
//! provider's own token counts, priced from damascus.prices (cache reads as cache reads); damascus.spend and
//! damascus.ticket_spend add it up; a budget stops claims before its limit is passed, says why, and lets work go
//! on when it is raised.

mod common;

use common::*;
use std::time::Duration;

fn setup() -> std::sync::MutexGuard<'static, ()> {
    setup_ticks(&[])
}

/// Prices for the model the tests' requests name (the default damascus.llm_model), removed afterwards.
struct Prices;

impl Prices {
    fn set(
        c: &mut Client,
        input: &str,
        output: &str,
        cache_write: &str,
        cache_read: &str,
    ) -> Prices {
        c.batch_execute(&format!(
            "DELETE FROM damascus.prices;
             INSERT INTO damascus.prices (model, input_usd_per_mtok, output_usd_per_mtok,
                                          cache_write_usd_per_mtok, cache_read_usd_per_mtok)
             VALUES (current_setting('damascus.llm_model'), {input}, {output}, {cache_write}, {cache_read})"
        ))
        .unwrap();
        Prices
    }
}

impl Drop for Prices {
    fn drop(&mut self) {
        let _ = client().batch_execute("DELETE FROM damascus.prices; DELETE FROM damascus.budgets");
    }
}

/// (input, output, cache write, cache read, cost matches the hand computation, cost_note, usage).
type Usage = (
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<bool>,
    Option<String>,
    serde_json::Value,
);

/// The usage columns of ticket `id`'s only cycle, and whether cost_usd equals `expected` (SQL over the
/// recorded counts, in numeric arithmetic).
fn usage(c: &mut Client, id: i64, expected: &str) -> Usage {
    let r = c
        .query_one(
            &format!(
                "SELECT input_tokens, output_tokens, cache_write_tokens, cache_read_tokens,
                        cost_usd = ({expected}) / 1000000, cost_note, usage
                 FROM damascus.cycles AS y WHERE ticket_id = $1"
            ),
            &[&id],
        )
        .unwrap();
    (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
    )
}

#[test]
fn anthropic_usage_with_cache_tokens_is_kept_and_priced() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let _p = Prices::set(&mut c, "3", "15", "3.75", "0.30");
    let id = submit(&mut c, "Cached", "body [fakellm:cache=1800:12000]");
    tick(&mut c).expect("claimed");
    // Anthropic's input_tokens leave the cached tokens out: writes and reads are priced on top.
    let (input, output, write, read, cost_ok, note, raw) = usage(
        &mut c,
        id,
        "y.input_tokens * 3 + 1800 * 3.75 + 12000 * 0.30 + y.output_tokens * 15",
    );
    assert!(input.unwrap() > 0 && output.unwrap() > 0);
    assert_eq!((write, read), (Some(1800), Some(12000)));
    assert_eq!((cost_ok, note), (Some(true), None));
    assert_eq!(raw["cache_creation_input_tokens"], 1800);
    assert_eq!(raw["cache_read_input_tokens"], 12000);
    assert_eq!(raw["input_tokens"], input.unwrap());
    // A hand-computed figure: 12000 cached tokens at 0.30 and 1800 written at 3.75 per million.
    let cached_part: f64 = c
        .query_one(
            "SELECT (cost_usd - (input_tokens * 3 + output_tokens * 15) / 1000000.0)::float8
             FROM damascus.cycles WHERE ticket_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!((cached_part - 0.01035).abs() < 1e-12, "{cached_part}");
}

#[test]
fn openai_cached_tokens_are_priced_as_cached_and_null_stays_null() {
    let _g = setup();
    fresh(Behavior::Good);
    let _provider = set_conf_for_test("damascus.llm_provider", "openai");
    let mut c = client();
    let _p = Prices::set(&mut c, "2.5", "10", "NULL", "1.25");
    let cached = submit(&mut c, "Cached", "body [fakellm:cache=0:100]");
    let null = submit(&mut c, "Null details", "body [fakellm:cache=0:null]");
    // refine_spec only, so the second tick runs `null` rather than `cached`'s next phase.
    let _phases = refine_spec_only(&mut c);
    tick(&mut c).expect("claimed");
    tick(&mut c).expect("claimed");
    // OpenAI's prompt_tokens include the cached ones: only the rest is priced as input.
    let (input, _, write, read, cost_ok, _, raw) = usage(
        &mut c,
        cached,
        "(y.input_tokens - 100) * 2.5 + 100 * 1.25 + y.output_tokens * 10",
    );
    assert!(input.unwrap() > 100);
    assert_eq!((write, read, cost_ok), (None, Some(100), Some(true)));
    assert_eq!(raw["prompt_tokens_details"]["cached_tokens"], 100);

    let (_, _, write, read, cost_ok, _, raw) =
        usage(&mut c, null, "y.input_tokens * 2.5 + y.output_tokens * 10");
    assert_eq!(
        (write, read, cost_ok),
        (None, None, Some(true)),
        "NULL, not 0"
    );
    assert!(raw["prompt_tokens_details"].is_null());
}

#[test]
fn a_model_without_a_price_has_no_cost_and_says_why_and_spend_adds_up() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let priced = {
        let _p = Prices::set(&mut c, "1", "2", "NULL", "NULL");
        let id = submit(&mut c, "Priced", "body");
        tick(&mut c).expect("claimed");
        id
    };
    // Without a price, a ticket that goes first (priority 10): its refine_spec and implement cycles.
    let unpriced: i64 = c
        .query_one("SELECT damascus_submit('Unpriced', 'body', 10)", &[])
        .unwrap()
        .get(0);
    for phase in ["refine_spec", "implement"] {
        let row = tick(&mut c).expect("claimed");
        assert_eq!((row.ticket_id, row.phase.as_str()), (unpriced, phase));
    }
    let notes: Vec<(Option<String>, String)> = c
        .query(
            "SELECT cost_usd::text, cost_note FROM damascus.cycles WHERE ticket_id = $1",
            &[&unpriced],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(notes.len(), 2);
    for (cost, note) in notes {
        assert_eq!(cost, None);
        assert!(note.starts_with("no price for model"), "{note}");
    }
    // Per ticket, the total over all its cycles.
    let r = c
        .query_one(
            "SELECT s.cycles, s.cost_usd = (SELECT y.cost_usd FROM damascus.cycles AS y WHERE y.ticket_id = $1)
             FROM damascus.ticket_spend AS s WHERE s.ticket_id = $1",
            &[&priced],
        )
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, bool>(1)), (1, true));
    let cycles: i64 = c
        .query_one(
            "SELECT cycles FROM damascus.ticket_spend WHERE ticket_id = $1",
            &[&unpriced],
        )
        .unwrap()
        .get(0);
    assert_eq!(cycles, 2);
    let r = c
        .query_one(
            "SELECT sum(cycles)::bigint, sum(unpriced_cycles)::bigint,
                    sum(cost_usd) = (SELECT sum(cost_usd) FROM damascus.cycles)
             FROM damascus.spend WHERE day = (now() AT TIME ZONE 'UTC')::date",
            &[],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, bool>(2)),
        (3, 2, true)
    );
}

fn spent(c: &mut Client) -> f64 {
    c.query_one(
        "SELECT coalesce(sum(cost_usd), 0)::float8 FROM damascus.cycles",
        &[],
    )
    .unwrap()
    .get(0)
}

fn specified(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM damascus.tickets WHERE state <> 'new'",
        &[],
    )
    .unwrap()
    .get(0)
}

/// A budget of two cents a day over 100 tickets: claims stop before the limit is passed (each cycle reserves
/// its worst case first), the waiting tickets say why, no attempt is used, and raising the limit lets them go
/// on.
#[test]
fn a_budget_stops_claims_before_its_limit_and_raising_it_lets_work_go_on() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let _p = Prices::set(&mut c, "0.5", "1", "NULL", "NULL");
    // refine_spec only: implement and review would share the budget and muddle the count.
    let _phases = refine_spec_only(&mut c);
    let budget: i64 = c
        .query_one(
            "INSERT INTO damascus.budgets (scope, period, limit_usd) VALUES ('all', 'day', 0.02) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    c.batch_execute(
        "SELECT damascus_submit('Budgeted ' || g, 'body') FROM generate_series(1, 100) AS g",
    )
    .unwrap();
    // Ticks until the budget has no room left for another worst case.
    wait_for("the budget to run out", Duration::from_secs(120), || {
        c.query("SELECT * FROM damascus_tick(100, 20)", &[])
            .unwrap();
        c.query_opt(
            "SELECT 1 FROM damascus.budgets WHERE id = $1 AND blocked_until > now() + interval '10 seconds'",
            &[&budget],
        )
        .unwrap()
        .map(|_| ())
    });
    let limit = 0.02;
    let done = specified(&mut c);
    let used = spent(&mut c);
    assert!(used <= limit, "spent {used} USD past the {limit} USD limit");
    assert!(
        (10..100).contains(&done),
        "{done} tickets ran before the budget stopped them"
    );
    let (held, reason): (i64, Option<String>) = {
        let r = c
            .query_one(
                "SELECT held_by_budget, held_reason FROM damascus.queue WHERE state = 'new'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(held, 100 - done);
    assert!(
        reason
            .as_deref()
            .unwrap_or_default()
            .contains("> limit 0.02 USD"),
        "{reason:?}"
    );
    let unused: i64 = c
        .query_one(
            "SELECT count(*) FROM damascus.tickets WHERE state = 'new' AND attempts <> 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unused, 0, "a ticket held back by a budget uses no attempt");
    assert!(
        c.query("SELECT * FROM damascus_tick(5, 5)", &[])
            .unwrap()
            .is_empty(),
        "nothing is claimed while the budget is spent"
    );
    let finding: Vec<String> = c
        .query("SELECT finding FROM damascus_analyze()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .filter(|f: &String| f.contains("holds work back"))
        .collect();
    assert_eq!(finding.len(), 1, "{finding:?}");

    c.execute(
        "UPDATE damascus.budgets SET limit_usd = 10 WHERE id = $1",
        &[&budget],
    )
    .unwrap();
    wait_for("every ticket to run", Duration::from_secs(120), || {
        c.query("SELECT * FROM damascus_tick(100, 20)", &[])
            .unwrap();
        (specified(&mut c) == 100).then_some(())
    });
    let reserved_all: i64 = c
        .query_one(
            "SELECT count(*) FROM damascus.cycles WHERE verdict = 'spec_ok' AND reserved_usd IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(reserved_all, 0, "every call reserved its worst case first");
}
