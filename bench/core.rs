//! Micro-benchmark of the pure core on realistic inputs: judging a spec and decoding a Messages response.
//! Run with `cargo bench --bench core`; prints ns per operation (median of 7 rounds).

use std::hint::black_box;
use std::time::Instant;

use damascus_core::phase::{PhaseDef, PhaseRow, TicketInput};
use damascus_core::spec;
use damascus_core::validate::Validator;
use damascus_core::wire::{Anthropic, Codec, LlmConfig};

fn median_ns(rounds: usize, iters: u32, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[rounds / 2]
}

fn main() {
    let good = fakellm::good_spec("Ticket #42: Add a health endpoint that returns the git sha");
    let big = format!(
        "{good}\n## Notes\n{}",
        "- a note line that pads the spec\n".repeat(200)
    );
    let response = serde_json::json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": good}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 300, "output_tokens": 900}
    })
    .to_string();
    let cfg = LlmConfig {
        base_url: "http://127.0.0.1:1".into(),
        model: "m".into(),
        api_key: Some("k".into()),
        timeout: std::time::Duration::from_secs(1),
    };
    // The shape of the seeded refine_spec row.
    let phase = PhaseDef::from_row(PhaseRow {
        name: "refine_spec".into(),
        kind: "llm".into(),
        from_state: "new".into(),
        transitions: serde_json::json!({"spec_ok": "specified"}),
        max_attempts: 3,
        max_rejections: 3,
        max_tokens: 4000,
        model: None,
        timeout_s: None,
        system_prompt: "You turn a software ticket into an implementation spec.".into(),
        prompt_template: "Ticket #{{id}}: {{title}}\n\n{{body}}".into(),
        validator: Validator::spec_json(),
        verdict_prefix: Some("spec".into()),
    })
    .expect("valid phase");
    let ticket = TicketInput {
        id: 42,
        state: "new".into(),
        title: "Add a health endpoint".into(),
        body: "GET /healthz".repeat(50),
        outputs: serde_json::json!({}),
        feedback: None,
        attempts: 0,
        rejections: 0,
        llm_errors: 0,
    };

    println!("{:<44} {:>12}", "operation", "ns/op");
    let rows: Vec<(String, f64)> = vec![
        (
            format!("spec::validate ({} B spec)", good.len()),
            median_ns(7, 2000, || {
                black_box(spec::validate(black_box(&good)).is_ok());
            }),
        ),
        (
            format!("spec::validate ({} B spec)", big.len()),
            median_ns(7, 300, || {
                black_box(spec::validate(black_box(&big)).is_ok());
            }),
        ),
        (
            format!("Anthropic::parse ({} B response)", response.len()),
            median_ns(7, 2000, || {
                black_box(Anthropic.parse(200, black_box(&response)).is_ok());
            }),
        ),
        (
            "prompt + Anthropic::build".to_string(),
            median_ns(7, 2000, || {
                black_box(Anthropic.build(&cfg, &phase.prompt(black_box(&ticket))));
            }),
        ),
        (
            "judge (parse result -> verdict)".to_string(),
            median_ns(7, 2000, || {
                let r = Anthropic.parse(200, &response);
                black_box(phase.judge(&ticket, &r));
            }),
        ),
    ];
    for (name, ns) in rows {
        println!("{name:<44} {ns:>12.0}");
    }
}
