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
//! [`LogFormat::Json`] writes one JSON object per line with tracing-subscriber's JSON formatter,
//! whose encoder escapes control characters itself (`\u001b`). It does not cut long values.
//!
//! The filter is read from `STREAMKIT_LOG` (`EnvFilter` syntax, e.g. `debug` or
//! `warn,streamkit=debug`), else [`DEFAULT_FILTER`].

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

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
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: `format` on stderr, filtered by `STREAMKIT_LOG`. Fails if a global
/// subscriber is already installed.
pub fn init(format: LogFormat) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_from_env("STREAMKIT_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colours_on_stderr()).fmt_fields(EscapedFields).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
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
    let mut escaper = Escaper { out, chars_left: MAX_VALUE_CHARS, cut_bytes: 0 };
    write!(escaper, "{value}")?;
    if escaper.cut_bytes > 0 {
        write!(escaper.out, "…({} more bytes)", escaper.cut_bytes)?;
    }
    Ok(())
}

/// `value` escaped and cut as [`write_escaped`] does it.
pub fn escape(value: impl fmt::Display) -> String {
    let mut out = String::new();
    // Writing to a String only fails if `value`'s own `Display` fails; what it wrote is kept.
    let _ = write_escaped(&mut out, value);
    out
}

/// A [`fmt::Write`] that escapes what passes through and drops (but counts) what is over the limit.
struct Escaper<'a> {
    out: &'a mut dyn fmt::Write,
    chars_left: usize,
    cut_bytes: usize,
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
            if needs_escape(c) {
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

    /// What a subscriber using [`EscapedFields`] writes for the events of `emit`.
    fn logged(emit: impl FnOnce()) -> String {
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
}
