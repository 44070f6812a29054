//! The catalogue of ways fakellm can answer, and their textual spellings (flags and in-prompt markers).

use std::fmt;
use std::time::Duration;

use crate::spec::canonical_section;

/// How the server answers a request that passed validation, in either wire format.
///
/// The phase asking (spec, implement or review, told apart by the system text) decides what
/// a good answer is. Behaviours aimed at one phase answer like `Good` in the others, so a
/// single default can run a whole pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// The phase's complete, well-formed answer (spec, diff, or approving review).
    Good,
    /// The phase's answer cut off (a spec inside `TDD Plan`, a diff or review about halfway),
    /// reported as a token-limit stop: `max_tokens` (Anthropic) or `length` (OpenAI).
    Truncated,
    /// Spec only: the spec without the named section (heading and body).
    MissingSection(String),
    /// Spec only: the named section's heading kept and its body emptied.
    EmptySection(String),
    /// Spec only: the only `## Test Command` line sits inside a code fence.
    FencedTestCommand,
    /// Review only: reasons ([`crate::REJECT_REASONS`]) and a last line `VERDICT: REJECT`.
    Reject,
    /// Implement only: prose that contains no diff.
    NoDiff,
    /// Wait this long (or until shutdown), then answer like `Good`.
    Slow(Duration),
    /// Answer with this HTTP status and the request format's error body.
    Status(u16),
    /// 200 with a JSON content type but a body that is not JSON.
    Garbage,
    /// 200 with valid JSON that is not a message.
    WrongShape,
    /// Read the request and never answer until the server shuts down.
    Hang,
    /// Read the request, then close the connection without a byte of answer.
    Reset,
    /// The first `times` requests with the same last user message text get `status` and the
    /// request format's error body; later ones with that text answer like `Good`.
    Flaky { status: u16, times: u32 },
    /// 200 whose content text is this many MiB (1-200), streamed, so a client's size cap is hit
    /// with the connection still delivering.
    Huge(u32),
    /// 200 with a JSON content type and a message envelope whose text holds bytes that are not
    /// UTF-8.
    NotUtf8,
    /// 200 with a valid message envelope carrying no text.
    EmptyContent,
    /// 200 with a valid message envelope whose only content is a tool call, not text.
    OddBlock,
    /// Send the head of a 200 and the start of its body, then one byte every 200 ms until the
    /// client gives up or the server shuts down.
    Endless,
    /// Answer like `Good`, with prompt-cache usage: Anthropic's `cache_creation_input_tokens` =
    /// `write` and `cache_read_input_tokens` = `read`; OpenAI's `prompt_tokens_details` =
    /// `{"cached_tokens": read}`. A `read` of `None` is sent as `null` (Anthropic) or as
    /// `"prompt_tokens_details": null` (OpenAI), as some servers do.
    Cached { write: u64, read: Option<u64> },
    /// The first request with a given last user message text gets 429 with `retry-after` of this
    /// many seconds (1-60) and the format's rate-limit error body; later ones with that text
    /// answer like `Good`, so a client's honouring of a long `retry-after` can be tested.
    Cooldown(u64),
    /// Every request gets 429 naming `enforced_spend_limit_reached`, with no `retry-after`: a
    /// spending cap that no amount of waiting lifts, which a client must not retry.
    SpendLimit,
}

/// Bounds for `huge=`: at least one MiB, and at most what a test can afford to send.
const HUGE_MAX_MIB: u32 = 200;

/// The longest `cooldown=` a test should have to sit through, in seconds.
const COOLDOWN_MAX_SECS: u64 = 60;

/// Shown in parse errors so a typo in a flag or marker is fixable without reading the source.
const SPELLINGS: &str = "good, truncated, missing=<Section Name>, empty=<Section Name>, fenced, \
                         reject, no-diff, slow=<millis>, status=<code>, flaky=<code>:<n>, \
                         garbage, wrong-shape, huge=<MiB>, not-utf8, empty-content, odd-block, \
                         hang, endless, reset, cache=<write>:<read|null>, cooldown=<secs>, \
                         spend-limit";

/// A marker in prompt text looks like `[fakellm:truncated]`.
pub(crate) const MARKER_OPEN: &str = "[fakellm:";

impl Behavior {
    /// Parses the spelling used by `--behavior` and by `[fakellm:...]` markers.
    pub fn parse(s: &str) -> Result<Behavior, String> {
        let s = s.trim();
        let (key, arg) = match s.split_once('=') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (s, None),
        };
        let behavior = match (key, arg) {
            ("good", None) => Behavior::Good,
            ("truncated", None) => Behavior::Truncated,
            ("fenced", None) => Behavior::FencedTestCommand,
            ("reject", None) => Behavior::Reject,
            ("no-diff", None) => Behavior::NoDiff,
            ("garbage", None) => Behavior::Garbage,
            ("wrong-shape", None) => Behavior::WrongShape,
            ("hang", None) => Behavior::Hang,
            ("reset", None) => Behavior::Reset,
            ("not-utf8", None) => Behavior::NotUtf8,
            ("empty-content", None) => Behavior::EmptyContent,
            ("odd-block", None) => Behavior::OddBlock,
            ("endless", None) => Behavior::Endless,
            ("spend-limit", None) => Behavior::SpendLimit,
            ("missing", Some(name)) => Behavior::MissingSection(section_arg(name)?),
            ("empty", Some(name)) => Behavior::EmptySection(section_arg(name)?),
            ("slow", Some(ms)) => {
                let ms: u64 = ms.parse().map_err(|_| {
                    format!("slow=<millis> needs a whole number of milliseconds, got {ms:?}")
                })?;
                Behavior::Slow(Duration::from_millis(ms))
            }
            ("status", Some(code)) => Behavior::Status(error_status("status=<code>", code)?),
            ("flaky", Some(arg)) => {
                let usage = "flaky=<code>:<n>";
                let (code, times) = arg.split_once(':').ok_or_else(|| {
                    format!("{usage} needs a status and a count, like flaky=429:2; got {arg:?}")
                })?;
                let status = error_status(usage, code.trim())?;
                let times = times
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("{usage} needs a count of at least 1, got {times:?}"))?;
                Behavior::Flaky { status, times }
            }
            ("cache", Some(arg)) => {
                let usage = "cache=<write>:<read|null>";
                let (write, read) = arg.split_once(':').ok_or_else(|| {
                    format!("{usage} needs two counts, like cache=1800:12000; got {arg:?}")
                })?;
                let write = write
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{usage}: {write:?} is not a token count"))?;
                let read = match read.trim() {
                    "null" => None,
                    n => Some(
                        n.parse::<u64>()
                            .map_err(|_| format!("{usage}: {n:?} is not a token count"))?,
                    ),
                };
                Behavior::Cached { write, read }
            }
            ("huge", Some(mib)) => {
                let mib = mib
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=HUGE_MAX_MIB).contains(n))
                    .ok_or_else(|| {
                        format!("huge=<MiB> needs a whole number 1-{HUGE_MAX_MIB}, got {mib:?}")
                    })?;
                Behavior::Huge(mib)
            }
            ("cooldown", Some(secs)) => {
                let secs = secs
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=COOLDOWN_MAX_SECS).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "cooldown=<secs> needs a whole number of seconds 1-{COOLDOWN_MAX_SECS}, got {secs:?}"
                        )
                    })?;
                Behavior::Cooldown(secs)
            }
            (
                "good" | "truncated" | "fenced" | "reject" | "no-diff" | "garbage" | "wrong-shape"
                | "hang" | "reset" | "not-utf8" | "empty-content" | "odd-block" | "endless"
                | "spend-limit",
                Some(_),
            ) => {
                return Err(format!("behavior {key:?} takes no argument"));
            }
            (
                "missing" | "empty" | "slow" | "status" | "flaky" | "huge" | "cache" | "cooldown",
                None,
            ) => {
                return Err(format!("behavior {key:?} needs an argument: {key}=..."));
            }
            _ => {
                return Err(format!(
                    "unknown behavior {s:?}; expected one of: {SPELLINGS}"
                ));
            }
        };
        Ok(behavior)
    }
}

/// An HTTP error status for `what`; a 2xx or 3xx would not be a failure to simulate.
fn error_status(what: &str, code: &str) -> Result<u16, String> {
    code.parse::<u16>()
        .ok()
        .filter(|c| (400..=599).contains(c))
        .ok_or_else(|| format!("{what} needs an HTTP error status 400-599, got {code:?}"))
}

/// Section names are matched loosely but stored canonically, so `Display` round-trips and
/// a misspelt name fails loudly instead of silently removing nothing.
fn section_arg(name: &str) -> Result<String, String> {
    canonical_section(name).map(str::to_string).ok_or_else(|| {
        format!(
            "unknown section {name:?}; expected one of: {}",
            crate::spec::SECTIONS.join(", ")
        )
    })
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behavior::Good => f.write_str("good"),
            Behavior::Truncated => f.write_str("truncated"),
            Behavior::MissingSection(name) => write!(f, "missing={name}"),
            Behavior::EmptySection(name) => write!(f, "empty={name}"),
            Behavior::FencedTestCommand => f.write_str("fenced"),
            Behavior::Reject => f.write_str("reject"),
            Behavior::NoDiff => f.write_str("no-diff"),
            Behavior::Slow(d) => write!(f, "slow={}", d.as_millis()),
            Behavior::Status(code) => write!(f, "status={code}"),
            Behavior::Garbage => f.write_str("garbage"),
            Behavior::WrongShape => f.write_str("wrong-shape"),
            Behavior::Hang => f.write_str("hang"),
            Behavior::Reset => f.write_str("reset"),
            Behavior::Flaky { status, times } => write!(f, "flaky={status}:{times}"),
            Behavior::Huge(mib) => write!(f, "huge={mib}"),
            Behavior::Cached { write: w, read } => match read {
                Some(r) => write!(f, "cache={w}:{r}"),
                None => write!(f, "cache={w}:null"),
            },
            Behavior::NotUtf8 => f.write_str("not-utf8"),
            Behavior::EmptyContent => f.write_str("empty-content"),
            Behavior::OddBlock => f.write_str("odd-block"),
            Behavior::Endless => f.write_str("endless"),
            Behavior::Cooldown(secs) => write!(f, "cooldown={secs}"),
            Behavior::SpendLimit => f.write_str("spend-limit"),
        }
    }
}

/// The first `[fakellm:...]` marker in `text`, if any. A malformed marker is an error rather
/// than ignored, because a test that meant to force a behaviour must not silently get `Good`.
pub(crate) fn find_marker(text: &str) -> Option<Result<Behavior, String>> {
    let start = text.find(MARKER_OPEN)?;
    let rest = &text[start + MARKER_OPEN.len()..];
    Some(match rest.find(']') {
        Some(end) => Behavior::parse(&rest[..end]).map_err(|e| format!("bad fakellm marker: {e}")),
        None => Err("bad fakellm marker: missing closing ']'".to_string()),
    })
}

/// `text` without any `[fakellm:...]` markers, so a marker never leaks into the generated answer.
pub(crate) fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(MARKER_OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        rest = match after.find(']') {
            Some(end) => &after[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips() {
        for s in [
            "good",
            "truncated",
            "missing=Test Command",
            "empty=Acceptance Criteria",
            "fenced",
            "reject",
            "no-diff",
            "slow=250",
            "status=429",
            "garbage",
            "wrong-shape",
            "hang",
            "reset",
            "flaky=429:2",
            "flaky=503:1",
            "huge=1",
            "huge=200",
            "not-utf8",
            "empty-content",
            "odd-block",
            "endless",
            "cache=1800:12000",
            "cache=0:null",
            "cooldown=1",
            "cooldown=60",
            "spend-limit",
        ] {
            let b = Behavior::parse(s).unwrap();
            assert_eq!(b.to_string(), s);
            assert_eq!(Behavior::parse(&b.to_string()).unwrap(), b);
        }
    }

    #[test]
    fn parse_builds_the_expected_variants() {
        assert_eq!(
            Behavior::parse("missing=test command").unwrap(),
            Behavior::MissingSection("Test Command".into())
        );
        assert_eq!(
            Behavior::parse("slow=1500").unwrap(),
            Behavior::Slow(Duration::from_millis(1500))
        );
        assert_eq!(
            Behavior::parse("status=529").unwrap(),
            Behavior::Status(529)
        );
        assert_eq!(
            Behavior::parse("flaky= 529 : 3").unwrap(),
            Behavior::Flaky {
                status: 529,
                times: 3
            }
        );
        assert_eq!(Behavior::parse("huge=9").unwrap(), Behavior::Huge(9));
        assert_eq!(
            Behavior::parse("cache=1800:12000").unwrap(),
            Behavior::Cached {
                write: 1800,
                read: Some(12000)
            }
        );
        assert_eq!(
            Behavior::parse("cache=0:null").unwrap(),
            Behavior::Cached {
                write: 0,
                read: None
            }
        );
        assert!(Behavior::parse("cache=x:1").is_err());
        assert_eq!(Behavior::parse("not-utf8").unwrap(), Behavior::NotUtf8);
        assert_eq!(
            Behavior::parse("empty-content").unwrap(),
            Behavior::EmptyContent
        );
        assert_eq!(Behavior::parse("odd-block").unwrap(), Behavior::OddBlock);
        assert_eq!(Behavior::parse("endless").unwrap(), Behavior::Endless);
        assert_eq!(
            Behavior::parse("cooldown= 30").unwrap(),
            Behavior::Cooldown(30)
        );
        assert_eq!(
            Behavior::parse("spend-limit").unwrap(),
            Behavior::SpendLimit
        );
        let unknown = Behavior::parse("nope").unwrap_err();
        assert!(unknown.contains("cooldown=<secs>"), "{unknown}");
        assert!(unknown.contains("spend-limit"), "{unknown}");
        assert!(
            Behavior::parse("nope")
                .unwrap_err()
                .contains("flaky=<code>:<n>")
        );
        assert_eq!(Behavior::parse(" reject ").unwrap(), Behavior::Reject);
        assert_eq!(Behavior::parse("no-diff").unwrap(), Behavior::NoDiff);
        assert!(
            Behavior::parse("nope")
                .unwrap_err()
                .contains("reject, no-diff")
        );
    }

    #[test]
    fn parse_rejects_bad_spellings() {
        for s in [
            "",
            "Good",
            "nice",
            "missing",
            "missing=Nope",
            "empty=",
            "slow=fast",
            "slow",
            "status=200",
            "status=abc",
            "good=1",
            "wrong_shape",
            "reject=1",
            "no_diff",
            "nodiff",
            "Reject",
            "flaky",
            "flaky=429",
            "flaky=429:",
            "flaky=429:0",
            "flaky=200:2",
            "flaky=abc:2",
            "flaky=429:-1",
            "flaky=429:2:3",
            "huge",
            "huge=0",
            "huge=201",
            "huge=1.5",
            "not_utf8",
            "not-utf8=1",
            "empty-content=1",
            "odd-block=x",
            "endless=5",
            "cooldown",
            "cooldown=",
            "cooldown=0",
            "cooldown=61",
            "cooldown=-1",
            "cooldown=1.5",
            "cooldown=soon",
            "spend-limit=1",
            "spend_limit",
            "spendlimit",
        ] {
            assert!(Behavior::parse(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn markers_are_found_and_stripped() {
        let text = "Add login\n[fakellm:missing=Out of Scope] please";
        assert_eq!(
            find_marker(text),
            Some(Ok(Behavior::MissingSection("Out of Scope".into())))
        );
        assert_eq!(strip_markers(text), "Add login\n please");
        assert_eq!(find_marker("no marker here"), None);
        assert!(matches!(find_marker("[fakellm:bogus]"), Some(Err(_))));
        assert!(matches!(find_marker("[fakellm:good"), Some(Err(_))));
        assert_eq!(
            find_marker("[fakellm:cooldown=5] Add login"),
            Some(Ok(Behavior::Cooldown(5)))
        );
        assert_eq!(
            find_marker("Add login [fakellm:spend-limit]"),
            Some(Ok(Behavior::SpendLimit))
        );
        assert!(
            find_marker("[fakellm:cooldown=0]")
                .is_some_and(|r| r.is_err_and(|e| e.contains("1-60")))
        );
    }
}
