//! Audit-log sampling: which allow events are written. Denies are always written. And the
//! text log format's field writer, which keeps a client's text from forging log lines.
//!
//! Usage: `AllowSampler::new(rate)` once per configuration; per allow,
//! `sampler.keeps(&facts.request_id)`. `tracing_subscriber::fmt().fmt_fields(TextLogFields)`
//! for `--log-format text`.
//!
//! The choice is a pure function of Envoy's `x-request-id` when there is one, so every replica
//! (and a test) agrees on which requests are logged, and a request that crosses several
//! services can be followed in all their logs or in none. The hash is FNV-1a with a SplitMix64
//! finalizer, written out here so it never changes with a library or compiler version. Without
//! a request id a counter spreads the kept events evenly: exactly `rate` of them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// Decides which allow events reach the audit log.
#[derive(Debug)]
pub struct AllowSampler {
    /// The fraction kept, in [0, 1].
    rate: f64,
    /// Allows seen without a request id (the fallback's position).
    without_id: AtomicU64,
}

// === impl AllowSampler ===

impl AllowSampler {
    /// `rate` is clamped to [0, 1] (the configuration refuses anything else already).
    pub fn new(rate: f64) -> Self {
        let rate = if rate.is_nan() {
            1.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        Self {
            rate,
            without_id: AtomicU64::new(0),
        }
    }

    /// Whether the allow event of the request with this `x-request-id` (possibly empty) is
    /// written.
    pub fn keeps(&self, request_id: &str) -> bool {
        if self.rate >= 1.0 {
            return true;
        }
        if self.rate <= 0.0 {
            return false;
        }
        if request_id.is_empty() {
            let n = self.without_id.fetch_add(1, Ordering::Relaxed);
            return keeps_nth(n, self.rate);
        }
        keeps_hash(request_id_hash(request_id), self.rate)
    }
}

/// The `n`th (from 0) of a sequence is kept when it carries the running count of kept events
/// past a whole number: with rate 0.25, events 3, 7, 11, …
fn keeps_nth(n: u64, rate: f64) -> bool {
    let before = (n as f64 * rate).floor();
    let after = ((n + 1) as f64 * rate).floor();
    after > before
}

/// A hash spread uniformly over u64 is kept when it falls in the lowest `rate` of the range.
fn keeps_hash(hash: u64, rate: f64) -> bool {
    // The top 53 bits as a fraction in [0, 1): exact in an f64.
    let fraction = (hash >> 11) as f64 / (1u64 << 53) as f64;
    fraction < rate
}

/// FNV-1a 64 of the id's bytes, finished with SplitMix64's mixer so that ids differing in a
/// few trailing characters (sequential ids) spread over the whole range.
pub fn request_id_hash(request_id: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in request_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

// === Text log fields ===

/// The field writer of the text log format (`--log-format text`):
/// `tracing_subscriber::fmt().fmt_fields(TextLogFields)`.
///
/// `name=value` fields separated by spaces, as tracing's default writes them, except that no
/// value is written raw: claim values (a username, a client id), request paths and request ids
/// come from clients, and written raw a `\n` in a username starts a forged log line, and a
/// space or `=` a forged field. A displayed value (`%value`) holding whitespace, `=`, `"` or a
/// control character is written quoted with Rust's string escapes (`"bob\nINFO audit: …"`);
/// strings are always quoted, as by default; the message has its control characters escaped.
/// The JSON format needs none of this: JSON strings are escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextLogFields;

impl<'w> MakeVisitor<Writer<'w>> for TextLogFields {
    type Visitor = EscapingVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> Self::Visitor {
        EscapingVisitor {
            writer,
            result: Ok(()),
            first: true,
        }
    }
}

/// Writes one event's (or span's) fields for [`TextLogFields`].
pub struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: Written<'_>) {
        // `log` crate metadata bridged into tracing, skipped as tracing's default does.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let name = field.name().trim_start_matches("r#");
        self.result = match value {
            Written::Message(text) => {
                write!(self.writer, "{separator}{}", escape_controls(text))
            }
            Written::Str(text) => write!(self.writer, "{separator}{name}={text:?}"),
            Written::Displayed(text) if is_plain(text) => {
                write!(self.writer, "{separator}{name}={text}")
            }
            Written::Displayed(text) => write!(self.writer, "{separator}{name}={text:?}"),
        };
    }
}

enum Written<'a> {
    Message(&'a str),
    Str(&'a str),
    Displayed(&'a str),
}

/// A value that reads the same written raw: no space, `=`, quote or control character.
fn is_plain(text: &str) -> bool {
    !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"')
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, Written::Message(value));
        } else {
            self.write(field, Written::Str(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.write(field, Written::Message(&text));
        } else {
            self.write(field, Written::Displayed(&text));
        }
    }
}

impl VisitOutput<fmt::Result> for EscapingVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapingVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Control characters (line breaks, terminal escapes) as `\n`, `\u{1b}`: one event stays one
/// line.
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: usize) -> impl Iterator<Item = String> {
        (0..count).map(|n| format!("{n:08x}-5b1c-4d0e-9a3f-{:012x}", n * 7919))
    }

    /// Writes one event through the text format and gives what it wrote.
    fn text_log_of(emit: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(TextLogFields)
            .with_ansi(false)
            .without_time()
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The test's log sink (the integration tests have their own: no code is shared with them).
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_log_values_cannot_forge_lines_or_fields() {
        let forged = "bob\nINFO audit: decision=allow subject=admin";
        let text = text_log_of(|| {
            tracing::info!(target: "audit", decision = "deny", subject = %forged, path = "/v2/", "checked\r\nINFO forged");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r#"subject="bob\nINFO audit: decision=allow subject=admin""#),
            "{text}"
        );
        assert!(text.contains("checked\\r\\nINFO forged"), "{text}");
        assert!(text.contains(r#"decision="deny" "#), "{text}");
        assert!(text.contains(r#"path="/v2/""#), "{text}");
    }

    #[test]
    fn hash_is_fixed_across_builds() {
        const HASH_OF_UUID: u64 = 0x7f5d_8b36_8a93_9711;
        // Replicas of different versions must agree: these values may never change.
        assert_eq!(request_id_hash(""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(
            request_id_hash("0b4d1a60-5b1c-4d0e-9a3f-2f4c1e0a9b77"),
            HASH_OF_UUID
        );
        assert_ne!(request_id_hash("a"), request_id_hash("b"));
    }

    #[test]
    fn rate_bounds_keep_all_or_none() {
        let all = AllowSampler::new(1.0);
        let none = AllowSampler::new(0.0);
        for id in ids(100).chain([String::new()]) {
            assert!(all.keeps(&id));
            assert!(!none.keeps(&id));
        }
        assert!(AllowSampler::new(f64::NAN).keeps("x"));
        assert!(!AllowSampler::new(-3.0).keeps("x"));
    }

    #[test]
    fn same_request_id_same_choice_in_every_replica() {
        let first = AllowSampler::new(0.3);
        let second = AllowSampler::new(0.3);
        for id in ids(500) {
            assert_eq!(first.keeps(&id), second.keeps(&id), "{id}");
            assert_eq!(first.keeps(&id), first.keeps(&id), "{id}");
        }
    }

    #[test]
    fn hashed_ids_are_kept_near_the_rate() {
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let sampler = AllowSampler::new(rate);
            let kept = ids(20_000).filter(|id| sampler.keeps(id)).count();
            let expected = 20_000.0 * rate;
            // Fixed inputs: this is deterministic; the tolerance only says the hash spreads.
            assert!(
                (kept as f64 - expected).abs() < expected * 0.1 + 20.0,
                "rate {rate}: kept {kept} of 20000"
            );
        }
    }

    #[test]
    fn lower_rate_keeps_a_subset() {
        let low = AllowSampler::new(0.1);
        let high = AllowSampler::new(0.4);
        for id in ids(2_000) {
            assert!(!low.keeps(&id) || high.keeps(&id), "{id}");
        }
    }

    #[test]
    fn without_request_id_exactly_the_rate_is_kept_evenly() {
        let sampler = AllowSampler::new(0.25);
        let kept: Vec<bool> = (0..12).map(|_| sampler.keeps("")).collect();
        assert_eq!(
            kept,
            [
                false, false, false, true, false, false, false, true, false, false, false, true
            ]
        );
        let sampler = AllowSampler::new(0.1);
        assert_eq!((0..1000).filter(|_| sampler.keeps("")).count(), 100);
    }
}
