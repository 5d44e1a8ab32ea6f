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

// === Non-blocking log writer ===

/// Log lines a [`NonBlocking`] writer queues before it drops allow events (about 300 bytes
/// each: a few MiB at most).
pub const LOG_QUEUE_LINES: usize = 16_384;

enum LogMessage {
    Line(Vec<u8>),
    /// Write everything queued before this, flush, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The log's writer, off the request path: a Check formats its event into a buffer and queues
/// it, and one thread writes the queue to the real writer (stderr), so no Check waits for a
/// write to a pipe or a terminal, nor for another Check's write.
///
/// Usage: `let (writer, guard) = NonBlocking::new(std::io::stderr(), LOG_QUEUE_LINES);`, then
/// `tracing_subscriber::fmt().with_writer(writer)`; keep `guard` until the process ends (its
/// drop writes out what is queued).
///
/// When the queue is full (the writer fell behind a burst), what happens depends on the event:
/// - an audit event that carries a `decision` but no `detail` (an allow or a passthrough) is
///   dropped and counted in `quay_authz_audit_events_dropped_total`: sampling allows is
///   already the documented way to trade their completeness for throughput;
/// - every other event waits for room: deny events (they carry `detail`), the bridge's
///   `bridge_mint` events, warnings and errors are never dropped, so under a sustained flood
///   the Checks that write them slow to the writer's pace, as every Check did before.
///
/// Which events may be dropped is decided per callsite from its metadata (the field names),
/// not from the values, so the choice costs nothing per event.
#[derive(Clone)]
pub struct NonBlocking {
    sender: std::sync::mpsc::SyncSender<LogMessage>,
    dropped: prometheus::IntCounter,
}

/// Writes out what is queued when dropped (at the end of `main`), waiting at most a second.
pub struct NonBlockingGuard {
    sender: std::sync::mpsc::SyncSender<LogMessage>,
}

impl NonBlocking {
    /// A writer queueing up to `capacity` lines for `out`, written by a thread of its own.
    pub fn new(
        out: impl std::io::Write + Send + 'static,
        capacity: usize,
    ) -> std::io::Result<(Self, NonBlockingGuard)> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_queue(receiver, out))?;
        Ok((
            Self {
                sender: sender.clone(),
                dropped: crate::metrics::AUDIT_EVENTS_DROPPED.clone(),
            },
            NonBlockingGuard { sender },
        ))
    }

    /// The same writer counting drops in `dropped` (tests: the process-wide counter is shared).
    pub fn counting_in(mut self, dropped: prometheus::IntCounter) -> Self {
        self.dropped = dropped;
        self
    }
}

impl Drop for NonBlockingGuard {
    fn drop(&mut self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.sender.send(LogMessage::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(1));
        }
    }
}

/// The writer thread: lines in order, flushed whenever the queue runs empty.
fn write_queue(receiver: std::sync::mpsc::Receiver<LogMessage>, out: impl std::io::Write) {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(message) = receiver.recv() {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            match message {
                // A log that cannot be written has nowhere to report it; keep serving.
                LogMessage::Line(line) => {
                    let _ = out.write_all(&line);
                }
                LogMessage::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = receiver.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// Whether events of this callsite may be dropped when the queue is full (see [`NonBlocking`]).
fn droppable(metadata: &tracing::Metadata<'_>) -> bool {
    let fields = metadata.fields();
    metadata.target() == "audit"
        && fields.field("decision").is_some()
        && fields.field("detail").is_none()
}

/// One event's bytes, queued when the formatter is done with it (the fmt layer writes a whole
/// event through one writer, then drops it).
pub struct QueuedLine {
    buffer: Vec<u8>,
    droppable: bool,
    writer: NonBlocking,
}

impl std::io::Write for QueuedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let line = LogMessage::Line(std::mem::take(&mut self.buffer));
        if !self.droppable {
            // Waits for room: never lost while the writer thread lives.
            let _ = self.writer.sender.send(line);
            return;
        }
        match self.writer.sender.try_send(line) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => self.writer.dropped.inc(),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlocking {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine {
            buffer: Vec::new(),
            droppable: false,
            writer: self.clone(),
        }
    }

    fn make_writer_for(&'a self, metadata: &tracing::Metadata<'_>) -> Self::Writer {
        QueuedLine {
            buffer: Vec::with_capacity(512),
            droppable: droppable(metadata),
            writer: self.clone(),
        }
    }
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
    #[derive(Clone, Default)]
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

    /// A sink whose writes wait until `open` is called: a log writer that fell behind.
    #[derive(Clone, Default)]
    struct Gate {
        open: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        written: Capture,
    }

    impl Gate {
        fn open(&self) {
            let (open, changed) = &*self.open;
            *open.lock().unwrap_or_else(|p| p.into_inner()) = true;
            changed.notify_all();
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.written.0.lock().unwrap_or_else(|p| p.into_inner()))
                .into_owned()
        }
    }

    impl std::io::Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (open, changed) = &*self.open;
            let mut is_open = open.lock().unwrap_or_else(|p| p.into_inner());
            while !*is_open {
                is_open = changed.wait(is_open).unwrap_or_else(|p| p.into_inner());
            }
            self.written.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Behind a writer that has stopped, allow events are dropped and counted, never waited
    /// for; deny events wait for room and every one of them is written.
    #[test]
    fn a_full_log_queue_drops_and_counts_allows_but_never_a_deny() {
        let gate = Gate::default();
        let dropped = prometheus::IntCounter::new("dropped", "test").expect("counter");
        let (writer, guard) = NonBlocking::new(gate.clone(), 4).expect("writer thread");
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(writer.counting_in(dropped.clone()))
            .finish();
        let opener = {
            let gate = gate.clone();
            // When the gate opens does not matter to what is asserted: before or after the
            // denies queue up, every one of them must be written.
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                gate.open();
            })
        };
        tracing::subscriber::with_default(subscriber, || {
            for index in 0..20 {
                tracing::info!(target: "audit", decision = "allow", request_id = index, "allowed");
            }
            for index in 0..10 {
                tracing::info!(target: "audit", decision = "deny", detail = "no", request_id = index, "denied");
            }
        });
        drop(guard);
        opener.join().expect("opener");
        let text = gate.text();
        let allows = text.matches("decision=\"allow\"").count();
        let denies = text.matches("decision=\"deny\"").count();
        assert_eq!(denies, 10, "{text}");
        assert_eq!(
            allows as u64 + dropped.get(),
            20,
            "every allow written or counted"
        );
        assert!(
            dropped.get() > 0,
            "a queue of 4 behind a stopped writer drops allows"
        );
    }

    #[test]
    fn only_allow_and_passthrough_audit_events_may_be_dropped() {
        fn callsite_droppable(emit: impl FnOnce()) -> bool {
            use std::sync::{Arc, Mutex};
            struct Probe(Arc<Mutex<Option<bool>>>);
            impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Probe {
                type Writer = std::io::Sink;
                fn make_writer(&'a self) -> Self::Writer {
                    std::io::sink()
                }
                fn make_writer_for(&'a self, metadata: &tracing::Metadata<'_>) -> Self::Writer {
                    *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(droppable(metadata));
                    std::io::sink()
                }
            }
            let seen = Arc::new(Mutex::new(None));
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(Probe(seen.clone()))
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
            let seen = *seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.expect("the event was written")
        }
        assert!(callsite_droppable(
            || tracing::info!(target: "audit", decision = "allow", subject = "a")
        ));
        assert!(callsite_droppable(
            || tracing::debug!(target: "audit", decision = "passthrough", reason = "r")
        ));
        assert!(!callsite_droppable(
            || tracing::info!(target: "audit", decision = "deny", detail = "d")
        ));
        assert!(!callsite_droppable(
            || tracing::info!(target: "audit", event = "bridge_mint", subject = "s")
        ));
        assert!(!callsite_droppable(|| tracing::warn!(
            decision = "allow",
            "not audit"
        )));
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
