//! The log output of the `streamkit` binary (feature `cli`): a `tracing` subscriber writing to stderr.
//!
//! Logs carry text from the network: a refused token's header (logged before authentication), space
//! and segment names, error texts quoting them. Written raw, a newline in such a string forges a log
//! line, an escape sequence repaints the operator's terminal, a bidi override reorders what they read,
//! and a 4 MiB name makes a 4 MiB line. So the text format escapes **every** field value and the
//! message once, in the formatting layer ([`EscapedFields`]), rather than at each call site, where the
//! next new field would be forgotten:
//!
//! * `\n`, `\r`, `\t` are written `\n`, `\r`, `\t`;
//! * every other control character (C0, DEL, C1) is written `\x1b` (below U+0080) or `\u{9b}`;
//! * U+2028, U+2029 (line and paragraph separators) and the bidi embedding, override and isolate
//!   characters (U+202A–U+202E, U+2066–U+2069) are written `\u{2028}` and so on;
//! * a value longer than [`MAX_VALUE_CHARS`] characters is cut there and ends with
//!   `…(N more bytes)`.
//!
//! Colours (level names) are used only when stderr is a terminal and `NO_COLOR` is unset, so a log
//! redirected to a file holds no escape sequence at all.
//!
//! [`LogFormat::Json`] writes one JSON object per line ([`JsonFormat`], [`JsonFields`]), in the shape
//! of tracing-subscriber's JSON formatter:
//!
//! ```json
//! {"timestamp":"2025-01-01T00:00:00.000000Z","level":"INFO","fields":{"message":"handshake refused: unauthorized","peer":"127.0.0.1:50000","error":"…","suppressed":12},"target":"streamkit::server"}
//! ```
//!
//! `fields` holds the event's fields in order, the message first. An event inside a span also has
//! `span` (the innermost span's fields and its `name`) and `spans` (the same for every span, from the
//! root). Errors are written with their sources (`outer: inner`), like in text logs. Numbers and booleans
//! stay JSON numbers and booleans; every other value is a string, cut like the text format's values
//! (after [`MAX_VALUE_CHARS`] characters, with `…(N more bytes)`), and the characters the text format
//! escapes are written as JSON escapes (`\u001b`, `\u009b`, `\u2028`, `\u202e`), so a line is one line
//! to every reader and the values decode back to what was logged.
//!
//! The filter is read from `STREAMKIT_LOG` (`EnvFilter` syntax, e.g. `debug` or
//! `warn,streamkit=debug`), else [`DEFAULT_FILTER`].

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use serde::Serializer as _;
use serde::ser::SerializeMap as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The filter used when `STREAMKIT_LOG` is unset or not a valid filter.
pub const DEFAULT_FILTER: &str = "warn,streamkit=info";

/// Characters of one field value (or message) written before the rest is cut.
pub const MAX_VALUE_CHARS: usize = 512;

/// How log lines are written (`--log-format`, `STREAMKIT_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines with escaped values ([`EscapedFields`]); the default.
    #[default]
    Text,
    /// One JSON object per line ([`JsonFormat`]), values cut and escaped like the text format's.
    Json,
}

/// Installs the global subscriber: `format` on stderr, filtered by `STREAMKIT_LOG`. Fails if a global
/// subscriber is already installed.
pub fn init(format: LogFormat) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_from_env("STREAMKIT_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colours_on_stderr()).fmt_fields(EscapedFields).try_init(),
        LogFormat::Json => {
            builder.with_ansi(false).fmt_fields(JsonFields).event_format(JsonFormat).try_init()
        }
    }
}

/// Whether stderr is a terminal that wants colours (<https://no-color.org>: a non-empty `NO_COLOR`
/// turns them off).
fn colours_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// A [`FormatFields`] writing the message and `name=value` pairs like tracing-subscriber's default,
/// with every value escaped and cut as the [module docs](self) say. Use it for the fields of events
/// and spans alike: `tracing_subscriber::fmt().fmt_fields(EscapedFields)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor { writer: &mut writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_, '_> {
    fn write(&mut self, field: &Field, value: impl fmt::Display) {
        if self.result.is_err() {
            return;
        }
        let separator = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = match field.name() {
            "message" => self.writer.write_str(separator),
            // Raw identifiers (`r#type = …`) are logged under their plain name.
            name => write!(self.writer, "{separator}{}=", name.strip_prefix("r#").unwrap_or(name)),
        }
        .and_then(|()| write_escaped(self.writer, value));
    }
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Like the default formatter: the message as is, other strings quoted.
        if field.name() == "message" {
            self.write(field, value);
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, ErrorChain(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// An error and its sources, `outer: inner: root`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// Writes `value` to `out` escaped, cut after [`MAX_VALUE_CHARS`] characters. The value is formatted
/// straight into the escaper, so a huge value is never copied whole.
pub fn write_escaped(out: &mut dyn fmt::Write, value: impl fmt::Display) -> fmt::Result {
    write_cut(out, value, true)
}

/// Writes `value` to `out` cut after [`MAX_VALUE_CHARS`] characters (followed by `…(N more bytes)`
/// when cut), escaping what [`needs_escape`] if `escape` is set.
fn write_cut(out: &mut dyn fmt::Write, value: impl fmt::Display, escape: bool) -> fmt::Result {
    let mut escaper = Escaper { out, chars_left: MAX_VALUE_CHARS, cut_bytes: 0, escape };
    write!(escaper, "{value}")?;
    if escaper.cut_bytes > 0 {
        write!(escaper.out, "…({} more bytes)", escaper.cut_bytes)?;
    }
    Ok(())
}

/// `value` cut as [`write_escaped`] does it but not escaped: for JSON strings, whose encoder escapes.
fn cut(value: impl fmt::Display) -> String {
    let mut out = String::new();
    // As in `escape`: only `value`'s own `Display` can fail, and what it wrote is kept.
    let _ = write_cut(&mut out, value, false);
    out
}

/// `value` escaped and cut as [`write_escaped`] does it.
pub fn escape(value: impl fmt::Display) -> String {
    let mut out = String::new();
    // Writing to a String only fails if `value`'s own `Display` fails; what it wrote is kept.
    let _ = write_escaped(&mut out, value);
    out
}

/// A [`fmt::Write`] that escapes what passes through (if `escape`) and drops (but counts) what is
/// over the limit.
struct Escaper<'a> {
    out: &'a mut dyn fmt::Write,
    chars_left: usize,
    cut_bytes: usize,
    escape: bool,
}

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Runs of harmless characters are written in one piece.
        let mut run_start = 0;
        for (at, c) in text.char_indices() {
            if self.chars_left == 0 {
                self.cut_bytes += text.len() - at;
                return self.out.write_str(&text[run_start..at]);
            }
            self.chars_left -= 1;
            if self.escape && needs_escape(c) {
                self.out.write_str(&text[run_start..at])?;
                match c {
                    '\n' => self.out.write_str("\\n")?,
                    '\r' => self.out.write_str("\\r")?,
                    '\t' => self.out.write_str("\\t")?,
                    c if c.is_ascii() => write!(self.out, "\\x{:02x}", u32::from(c))?,
                    c => write!(self.out, "\\u{{{:x}}}", u32::from(c))?,
                }
                run_start = at + c.len_utf8();
            }
        }
        self.out.write_str(&text[run_start..])
    }
}

/// Control characters (C0, DEL, C1), the Unicode line and paragraph separators, and the bidi
/// embedding, override and isolate characters ("Trojan Source").
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A [`FormatEvent`] writing one JSON object per line, as the [module docs](self) show. Use it with
/// [`JsonFields`]: `tracing_subscriber::fmt().fmt_fields(JsonFields).event_format(JsonFormat)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFormat;

/// The [`FormatFields`] of [`JsonFormat`]: a span's fields as a JSON object (values cut like the
/// text format's), which [`JsonFormat`] copies into the `span` and `spans` of each event.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFields;

impl<S> FormatEvent<S, JsonFields> for JsonFormat
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let spans: Vec<Value> = ctx
            .event_scope()
            .map(|scope| scope.from_root().map(|span| span_object(&span)).collect())
            .unwrap_or_default();

        let mut line = Vec::with_capacity(256);
        let mut serializer = serde_json::Serializer::with_formatter(&mut line, EscapingFormatter);
        let result = (|| {
            let mut map = serializer.serialize_map(None)?;
            map.serialize_entry("timestamp", &timestamp)?;
            map.serialize_entry("level", meta.level().as_str())?;
            map.serialize_entry("fields", &OrderedFields(&fields.values))?;
            map.serialize_entry("target", meta.target())?;
            if let Some(current) = spans.last() {
                map.serialize_entry("span", current)?;
                map.serialize_entry("spans", &spans)?;
            }
            map.end()
        })();
        result.map_err(|_| fmt::Error)?;
        // serde_json writes UTF-8 only; a failure here would be a bug, reported as a write error.
        let line = std::str::from_utf8(&line).map_err(|_| fmt::Error)?;
        writer.write_str(line)?;
        writer.write_char('\n')
    }
}

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = JsonVisitor::default();
        fields.record(&mut visitor);
        let object: Map<String, Value> =
            visitor.values.into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
        writer.write_str(&to_json(&object)?)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Fields are kept as text between events (the fmt layer's design): parse, add, write again.
        let mut object: Map<String, Value> = serde_json::from_str(&current.fields).unwrap_or_default();
        let mut visitor = JsonVisitor::default();
        fields.record(&mut visitor);
        object.extend(visitor.values.into_iter().map(|(name, value)| (name.to_owned(), value)));
        current.fields = to_json(&object)?;
        Ok(())
    }
}

/// A span's fields (as [`JsonFields`] stored them) and its `name`, as one JSON object.
fn span_object<S: for<'lookup> LookupSpan<'lookup>>(
    span: &tracing_subscriber::registry::SpanRef<'_, S>,
) -> Value {
    let extensions = span.extensions();
    let mut object: Map<String, Value> = extensions
        .get::<FormattedFields<JsonFields>>()
        .and_then(|stored| serde_json::from_str(&stored.fields).ok())
        .unwrap_or_default();
    object.insert("name".to_owned(), Value::from(span.metadata().name()));
    Value::Object(object)
}

/// `value` as compact JSON with [`EscapingFormatter`].
fn to_json(value: &impl serde::Serialize) -> Result<String, fmt::Error> {
    let mut out = Vec::new();
    value
        .serialize(&mut serde_json::Serializer::with_formatter(&mut out, EscapingFormatter))
        .map_err(|_| fmt::Error)?;
    String::from_utf8(out).map_err(|_| fmt::Error)
}

/// Fields in the order they were recorded (the message first), as a JSON object.
struct OrderedFields<'a>(&'a [(&'static str, Value)]);

impl serde::Serialize for OrderedFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Collects field values as JSON: numbers and booleans as such, everything else as a string cut
/// after [`MAX_VALUE_CHARS`] characters.
#[derive(Default)]
struct JsonVisitor {
    values: Vec<(&'static str, Value)>,
}

impl JsonVisitor {
    fn insert(&mut self, field: &Field, value: Value) {
        // Raw identifiers (`r#type = …`) are logged under their plain name, as in text logs.
        let name = field.name();
        self.values.push((name.strip_prefix("r#").unwrap_or(name), value));
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(cut(value)));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, Value::String(cut(ErrorChain(value))));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(cut(format_args!("{value:?}"))));
    }
}

/// serde_json's compact output, with the characters [`needs_escape`] that serde_json leaves raw
/// (DEL, C1 controls, U+2028/2029, bidi controls) written as `\uXXXX` escapes too. serde_json escapes
/// C0 controls, `"` and `\` itself before handing over the fragments in between.
struct EscapingFormatter;

impl serde_json::ser::Formatter for EscapingFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut run_start = 0;
        for (at, c) in fragment.char_indices() {
            if needs_escape(c) {
                writer.write_all(&fragment.as_bytes()[run_start..at])?;
                // Every such character is in the Basic Multilingual Plane: one `\uXXXX` suffices.
                write!(writer, "\\u{:04x}", u32::from(c))?;
                run_start = at + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[run_start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn plain_text_is_untouched() {
        let text = "store_id=5f0c… space \"orders\" – ünïcødé, 日本語, emoji 🦀, backslash \\ and quotes '\"";
        assert_eq!(escape(text), text);
    }

    #[test]
    fn line_breaks_and_tabs_are_escaped() {
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(
            escape("HS256\n2025-01-01T00:00:00Z  INFO forged"),
            "HS256\\n2025-01-01T00:00:00Z  INFO forged"
        );
    }

    #[test]
    fn every_control_character_is_escaped() {
        assert_eq!(escape("\u{1b}[31mred"), "\\x1b[31mred");
        assert_eq!(escape("\0\u{7}\u{8}\u{c}\u{7f}"), "\\x00\\x07\\x08\\x0c\\x7f");
        // C1: U+009B is CSI in 8-bit terminals, U+0085 is NEL (a line break to some readers).
        assert_eq!(escape("\u{9b}31m\u{85}\u{80}\u{9f}"), "\\u{9b}31m\\u{85}\\u{80}\\u{9f}");
        for c in (0..=0x9f_u32).filter_map(char::from_u32).filter(|c| c.is_control()) {
            let escaped = escape(c);
            assert!(escaped.starts_with('\\') && escaped.chars().all(|c| c.is_ascii_graphic()), "{c:?}");
        }
    }

    #[test]
    fn unicode_separators_and_bidi_controls_are_escaped() {
        assert_eq!(escape("a\u{2028}b\u{2029}c"), "a\\u{2028}b\\u{2029}c");
        assert_eq!(escape("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        for c in
            ['\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}']
        {
            assert_eq!(escape(c), format!("\\u{{{:x}}}", u32::from(c)));
        }
    }

    #[test]
    fn long_values_are_cut() {
        let exact = "a".repeat(MAX_VALUE_CHARS);
        assert_eq!(escape(&exact), exact);
        let long = "é".repeat(MAX_VALUE_CHARS + 10);
        assert_eq!(escape(&long), format!("{}…(20 more bytes)", "é".repeat(MAX_VALUE_CHARS)));
        // 4 MiB arriving in many pieces (a `Display` that writes piecewise) is cut the same way.
        let huge = escape(format_args!("{}{}", "b".repeat(4 << 20), "\n"));
        assert_eq!(huge, format!("{}…({} more bytes)", "b".repeat(MAX_VALUE_CHARS), (4 << 20) - 511));
        // Escapes count as one character of the budget.
        let newlines = "\n".repeat(MAX_VALUE_CHARS + 1);
        assert_eq!(escape(&newlines), format!("{}…(1 more bytes)", "\\n".repeat(MAX_VALUE_CHARS)));
    }

    /// A log sink shared with the test.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a subscriber using [`EscapedFields`] writes for the events of `emit`.
    fn logged(emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn messages_fields_and_span_fields_are_escaped() {
        let space = "orders\n2025-01-01T00:00:00Z  INFO <forged>\u{1b}[31m";
        let error = std::io::Error::other("bad\r\nthing");
        let output = logged(|| {
            let span = tracing::info_span!("conn", peer = "1.2.3.4\u{202e}");
            let _entered = span.enter();
            tracing::info!(%space, r#type = 7, quoted = "x\ty", error = &error as &dyn std::error::Error, "closed {}", "a\u{2028}b");
        });
        assert_eq!(output.lines().count(), 1, "{output}");
        assert!(!output.contains('\u{1b}') && !output.contains('\r') && !output.contains('\u{202e}'));
        assert!(output.contains("conn{peer=\"1.2.3.4\\u{202e}\"}"), "{output}");
        assert!(output.contains("closed a\\u{2028}b"), "{output}");
        assert!(output.contains("space=orders\\n2025-01-01T00:00:00Z  INFO <forged>\\x1b[31m"), "{output}");
        assert!(output.contains(" type=7 quoted=\"x\\ty\" error=bad\\r\\nthing"), "{output}");
    }

    /// What a subscriber using [`JsonFormat`] writes for the events of `emit`, one parsed object per
    /// line, and the raw text.
    fn logged_json(emit: impl FnOnce()) -> (Vec<Map<String, Value>>, String) {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .fmt_fields(JsonFields)
            .event_format(JsonFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let objects = text
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"))
            })
            .collect();
        (objects, text)
    }

    #[test]
    fn json_has_the_shape_of_tracing_subscribers() {
        let error = std::io::Error::other("inner");
        let (events, text) = logged_json(|| {
            tracing::info!(
                count = 3_u64,
                delta = -2_i64,
                ok = true,
                ratio = 0.5,
                r#type = "t",
                "hello {}",
                42
            );
            let span = tracing::info_span!("conn", id = 7_u64, peer = tracing::field::Empty);
            span.record("peer", "1.2.3.4");
            let _entered = span.enter();
            let inner = tracing::warn_span!("op", kind = "produce");
            let _inner = inner.enter();
            tracing::warn!(error = &error as &dyn std::error::Error, "inside");
        });
        assert_eq!(events.len(), 2, "{text}");
        let first = &events[0];
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        // serde_json's maps are sorted here; the order on the line is checked on the text.
        assert_eq!(keys, ["fields", "level", "target", "timestamp"], "{text}");
        let line = text.lines().next().unwrap();
        assert!(line.starts_with("{\"timestamp\":\""), "{line}");
        assert!(
            line.contains("\"level\":\"INFO\",\"fields\":{\"message\":\"hello 42\",\"count\":3,"),
            "{line}"
        );
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(first["target"], "streamkit::logging::tests");
        let fields = first["fields"].as_object().unwrap();
        assert_eq!(fields["count"], 3);
        assert_eq!(fields["delta"], -2);
        assert_eq!(fields["ok"], true);
        assert_eq!(fields["ratio"], 0.5);
        assert_eq!(fields["type"], "t");

        let second = &events[1];
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["fields"]["error"], "inner");
        // `span` is the innermost span, `spans` every span from the root; fields recorded after the
        // span was created are there too.
        assert_eq!(second["span"], serde_json::json!({"kind": "produce", "name": "op"}), "{text}");
        assert_eq!(
            second["spans"],
            serde_json::json!([{"id": 7, "peer": "1.2.3.4", "name": "conn"}, {"kind": "produce", "name": "op"}]),
            "{text}"
        );
    }

    #[test]
    fn json_escapes_what_text_escapes_and_decodes_back() {
        let space =
            "orders\n<forged>\u{1b}[31m\u{7f}\u{85}\u{9b}a\u{2028}b\u{2029}\u{202e}gnp\u{2066}x\u{2069}";
        let (events, text) = logged_json(|| {
            let span = tracing::info_span!("conn", peer = "1.2.3.4\u{202e}");
            let _entered = span.enter();
            tracing::info!(space, debug = ?space, "closed {}", "a\u{2028}b");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        for raw in [
            '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}', '\u{202e}', '\u{2066}',
            '\u{2069}',
        ] {
            assert!(!text.contains(raw), "{raw:?} written raw: {text}");
        }
        for escaped in
            [r"\n", r"\u001b", r"\u007f", r"\u0085", r"\u009b", r"\u2028", r"\u2029", r"\u202e", r"\u2066"]
        {
            assert!(text.contains(escaped), "{escaped} missing: {text}");
        }
        // The values come back intact from the JSON.
        let event = &events[0];
        assert_eq!(event["fields"]["space"], space);
        assert_eq!(event["fields"]["debug"], format!("{space:?}"));
        assert_eq!(event["fields"]["message"], "closed a\u{2028}b");
        assert_eq!(event["span"]["peer"], "1.2.3.4\u{202e}");
    }

    #[test]
    fn json_values_are_cut_like_text_values() {
        let huge = "b".repeat(4 << 20);
        let exact = "é".repeat(MAX_VALUE_CHARS);
        let error = std::io::Error::other("x".repeat(MAX_VALUE_CHARS + 3));
        let (events, text) = logged_json(|| {
            let span = tracing::info_span!("conn", peer = %huge);
            let _entered = span.enter();
            tracing::info!(huge = huge.as_str(), shown = %huge, exact = exact.as_str(), error = &error as &dyn std::error::Error, "{huge}");
        });
        assert!(text.len() < 8 * 1024, "{} bytes logged", text.len());
        let cut_huge =
            format!("{}…({} more bytes)", "b".repeat(MAX_VALUE_CHARS), (4 << 20) - MAX_VALUE_CHARS);
        let fields = &events[0]["fields"];
        assert_eq!(fields["huge"], cut_huge);
        assert_eq!(fields["shown"], cut_huge);
        assert_eq!(fields["message"], cut_huge);
        assert_eq!(fields["exact"], exact);
        assert_eq!(fields["error"], format!("{}…(3 more bytes)", "x".repeat(MAX_VALUE_CHARS)));
        assert_eq!(events[0]["span"]["peer"], cut_huge);
        // Text and JSON cut at the same place.
        assert_eq!(escape(&huge), cut_huge);
    }
}
