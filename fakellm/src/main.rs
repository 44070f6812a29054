//! Command-line entry point: serves fakellm until killed, standing in for the real API in `make run`.

use std::io::Write;
use std::process::ExitCode;

use fakellm::{Behavior, FakeLlm};

const USAGE: &str = "usage: fakellm [--addr HOST:PORT] [--behavior SPELLING]

  --addr HOST:PORT     where to listen (default 127.0.0.1:8787; port 0 picks a free port)
  --behavior SPELLING  default answer: good, truncated, missing=<Section Name>,
                       empty=<Section Name>, fenced, reject, no-diff, slow=<millis>,
                       status=<code>, flaky=<code>:<n>, garbage, wrong-shape, huge=<MiB>,
                       not-utf8, empty-content, odd-block, hang, endless, reset,
                       cache=<write>:<read|null>, cooldown=<secs>, spend-limit
                       (default good)

Serves two wire formats on the same address:
  POST /v1/messages          Anthropic Messages (x-api-key and anthropic-version headers)
  POST /v1/chat/completions  OpenAI Chat Completions (Authorization: Bearer <key>)

The system text picks the phase being answered: containing \"VERDICT:\" -> a review ending
in VERDICT: APPROVE; else containing \"unified diff\" -> a sentence and a fenced diff; else
a six-section Markdown spec. missing=, empty= and fenced shape specs only, reject only
reviews (VERDICT: REJECT), no-diff only implement answers; elsewhere they answer like good.

The others misbehave in every phase: status=<code> answers with that error (429, 503 and
529 with retry-after: 1); flaky=<code>:<n> does so for the first n requests with the same
last user message, then answers like good; garbage is not JSON; wrong-shape is JSON but
not a message; huge=<MiB> streams a message whose text is that many MiB (1-200); not-utf8
puts bytes 0xff 0xfe in the text; empty-content has no text; odd-block holds only a tool
call; hang never answers; endless sends a 200 head, then one body byte every 200 ms for
ever; reset closes without answering; cache=<write>:<read|null> answers like good with
prompt-cache usage; cooldown=<secs> answers the first request with a given last user
message with 429 and retry-after: <secs> (1-60), later ones like good; spend-limit answers
every request with 429 naming enforced_spend_limit_reached and no retry-after.

A prompt containing [fakellm:SPELLING] overrides the default for that request.";

struct Options {
    addr: String,
    behavior: Behavior,
}

/// `Ok(None)` means help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut opts = Options {
        addr: "127.0.0.1:8787".to_string(),
        behavior: Behavior::Good,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => opts.addr = value()?,
            "--behavior" => opts.behavior = Behavior::parse(&value()?)?,
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    Ok(Some(opts))
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fakellm: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let server = match FakeLlm::start_on(&opts.addr, opts.behavior) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("fakellm: cannot listen on {}: {e}", opts.addr);
            return ExitCode::FAILURE;
        }
    };
    server.set_logging(true);
    {
        // Scripts wait for this exact line to learn the port, so it must not sit in a buffer.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "fakellm listening on {}", server.url());
        let _ = out.flush();
    }
    // All work happens on server threads; parking keeps `server` alive until a signal kills us.
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        let o = parse(&[]).unwrap().unwrap();
        assert_eq!(
            (o.addr.as_str(), o.behavior),
            ("127.0.0.1:8787", Behavior::Good)
        );
        let o = parse(&["--addr", "127.0.0.1:0", "--behavior=status=429"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.addr.as_str(), o.behavior),
            ("127.0.0.1:0", Behavior::Status(429))
        );
        let o = parse(&["--behavior", "cooldown=5"]).unwrap().unwrap();
        assert_eq!(o.behavior, Behavior::Cooldown(5));
        let o = parse(&["--behavior=spend-limit"]).unwrap().unwrap();
        assert_eq!(o.behavior, Behavior::SpendLimit);
        assert!(parse(&["--help"]).unwrap().is_none());
        for bad in [
            &["--addr"][..],
            &["--behavior", "nope"],
            &["--behavior", "cooldown=0"],
            &["--behavior", "spend-limit=1"],
            &["--port", "1"],
            &["extra"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
