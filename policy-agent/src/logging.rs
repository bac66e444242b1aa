//! The agent's log: `tracing` events on stderr, one line each, as
//! `TIME LEVEL weft-agent: MESSAGE key=value ...`, the fields of the event
//! first, then those of weft's spans it is in (e.g. `node=`). The message
//! comes right after `weft-agent: `, so a line can be found by its text
//! (tests and the demo look for `weft-agent: denied {json}`). The level is
//! an `EnvFilter` directive: `--log-level`, else `WEFT_LOG`, else `RUST_LOG`,
//! else `info`.
//!
//! Libraries (kube-client, kube-runtime, hyper, tower) log in the same line
//! format, their crate named after `weft-agent: `, their level lowered to
//! DEBUG (TRACE for their own debug events): every failure they log also
//! comes back to weft as an error, which weft logs once, with advice. Their
//! fields are written with Display; a field only a Debug dump can show (a
//! struct) is left out, and newlines never split a line.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// The level when neither the flag nor an env var says.
pub const DEFAULT_LEVEL: &str = "info";

/// Checks a `--log-level` value (a level, or directives such as
/// `info,weft_agent::agent=debug`), for clap.
pub fn parse_level(s: &str) -> Result<String, String> {
    EnvFilter::builder().parse(s).map(|_| s.to_string()).map_err(|e| format!("log level {s:?}: {e}"))
}

/// The directives in force: `flag` (which clap fills from `WEFT_LOG` too),
/// else `RUST_LOG`, else `DEFAULT_LEVEL`.
pub fn directives(flag: Option<&str>) -> String {
    flag.map(String::from)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| parse_level(s).is_ok()))
        .unwrap_or_else(|| DEFAULT_LEVEL.into())
}

/// Whether an event or span target is weft's own (else a library's).
fn is_weft(target: &str) -> bool {
    target.starts_with("weft")
}

/// The level a library's event is shown at (see the module doc).
pub fn library_level(level: Level) -> Level {
    if level <= Level::INFO {
        Level::DEBUG
    } else {
        Level::TRACE
    }
}

/// The line format described in the module doc, as a layer.
pub struct LineLayer<W> {
    writer: W,
    /// Without a timestamp (tests compare whole lines).
    no_time: bool,
    /// The most verbose level any directive enables: a library event shows
    /// when its lowered level is within it.
    library_max: LevelFilter,
    /// This node's name, on every line (threads outside the agent's span too).
    node: Option<String>,
}

/// The `key=value` text of one of weft's spans.
struct SpanFields(String);

impl<S, W> Layer<S> for LineLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if !is_weft(span.metadata().target()) {
            return;
        }
        let mut v = Fields::new(false);
        attrs.record(&mut v);
        span.extensions_mut().insert(SpanFields(v.fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(text)) = ext.get_mut::<SpanFields>() {
            let mut v = Fields::new(false);
            values.record(&mut v);
            text.push_str(&v.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let library = !is_weft(meta.target());
        let level = if library { library_level(*meta.level()) } else { *meta.level() };
        if library && self.library_max < level {
            return;
        }
        let mut v = Fields::new(library);
        event.record(&mut v);
        let mut line = String::new();
        if !self.no_time {
            let _ = SystemTime.format_time(&mut Writer::new(&mut line));
            line.push(' ');
        }
        let _ = write!(line, "{level} weft-agent: ");
        if library {
            let _ = write!(line, "{}: ", meta.target().split("::").next().unwrap_or_default());
        }
        line.push_str(&v.message);
        line.push_str(&v.fields);
        for span in ctx.event_scope(event).into_iter().flat_map(|s| s.from_root()) {
            if let Some(SpanFields(text)) = span.extensions().get::<SpanFields>() {
                line.push_str(text);
            }
        }
        if let Some(node) = self.node.as_deref().filter(|_| !line.contains(" node=")) {
            let _ = write!(line, " node={node}");
        }
        // One event, one line, whatever the message held.
        let mut line = line.replace(['\n', '\r'], " ");
        line.push('\n');
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

/// Collects an event's message and its ` key=value` fields.
struct Fields {
    message: String,
    fields: String,
    /// A library's event: fields that only a Debug dump shows are left out.
    library: bool,
}

impl Fields {
    fn new(library: bool) -> Fields {
        Fields { message: String::new(), fields: String::new(), library }
    }

    fn push(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let _ = write!(self.fields, " {}={value}", field.name());
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            _ => self.push(field, format_args!("{value:?}")),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let text = error_chain(value);
        match field.name() {
            "message" => self.message.push_str(&text),
            _ => self.push(field, format_args!("{text}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields and the message arrive here; their Debug is their Display.
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message.push_str(&text);
        } else if !(self.library && (text.contains('{') || text.len() > 200)) {
            self.push(field, format_args!("{text}"));
        }
    }
}

/// An error and its sources, `a: b: c`, each said once (many errors repeat
/// their source in their own text).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A subscriber with the line format and the given directives (invalid
/// directives fall back to `DEFAULT_LEVEL`), writing to `writer`; `node`
/// ends every line that no span gave a `node=`.
pub fn subscriber<W>(
    directives: &str,
    writer: W,
    no_time: bool,
    node: Option<&str>,
) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder().parse(directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL));
    let library_max = filter.max_level_hint().unwrap_or(LevelFilter::INFO);
    let node = node.map(String::from);
    tracing_subscriber::registry().with(filter).with(LineLayer { writer, no_time, library_max, node })
}

/// Installs the stderr subscriber for the whole process, naming `node` on
/// every line; a second call is a no-op.
pub fn init(directives: &str, node: &str) {
    let _ =
        tracing::subscriber::set_global_default(subscriber(directives, std::io::stderr, false, Some(node)));
}

/// A line in the log's format for stdout (the "ready" line a launcher waits for).
pub fn stdout_line(level: Level, message: &str, node: &str) -> String {
    let mut line = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut line));
    let _ = write!(line, " {level} weft-agent: {message} node={node}");
    line
}

/// Test support: the lines `f` logs at `directives` (no time; `node` ends them).
#[cfg(test)]
pub(crate) fn captured(directives: &str, node: Option<&str>, f: impl FnOnce()) -> Vec<String> {
    use std::sync::{Arc, Mutex};

    /// A writer appending to a shared buffer.
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let buf = buf.clone();
        move || Sink(buf.clone())
    };
    tracing::subscriber::with_default(subscriber(directives, writer, true, node), f);
    let text = String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(directives: &str, f: impl FnOnce()) -> Vec<String> {
        captured(directives, None, f)
    }

    #[test]
    fn message_first_then_fields_then_span_fields() {
        let got = lines("info", || {
            let span = tracing::info_span!("agent", node = "node-1");
            let _g = span.enter();
            tracing::info!(generation = "abc", ms = 3, "synced");
            tracing::warn!("denied {}", "{\"port\":81}");
        });
        assert_eq!(
            got,
            [
                "INFO weft-agent: synced generation=\"abc\" ms=3 node=\"node-1\"",
                "WARN weft-agent: denied {\"port\":81} node=\"node-1\"",
            ]
        );
    }

    #[test]
    fn the_level_filters() {
        let log = || {
            tracing::debug!("detail");
            tracing::info!("news");
            tracing::error!("broken");
        };
        assert_eq!(lines("error", log), ["ERROR weft-agent: broken"]);
        assert_eq!(lines("debug", log).len(), 3);
        // Per-module directives work on this crate's module paths.
        assert_eq!(lines("warn,weft_agent::logging=debug", log).len(), 3);
        assert_eq!(lines("warn,weft_agent::agent=debug", log).len(), 1);
    }

    #[test]
    fn levels_are_checked_and_fall_back() {
        assert!(parse_level("debug").is_ok());
        assert!(parse_level("info,weft_agent::agent=trace").is_ok());
        assert!(parse_level("weft=loud").is_err());
        assert_eq!(directives(Some("warn")), "warn");
        // A broken directive string never silences the log.
        assert_eq!(lines("=[", || tracing::info!("still here")), ["INFO weft-agent: still here"]);
    }

    #[test]
    fn library_events_are_lowered_and_named() {
        #[derive(Debug)]
        struct Dump {
            #[allow(dead_code)]
            refused: bool,
        }
        let log = || {
            tracing::error!(target: "kube_client::client::builder", "failed with error {}", "client error (Connect)");
            tracing::warn!(target: "kube_runtime::watcher", status = ?Some(403), detail = ?Dump { refused: true }, "watch error\nsecond line");
        };
        assert!(lines("info", log).is_empty(), "hidden at info");
        assert_eq!(
            lines("debug", log),
            [
                "DEBUG weft-agent: kube_client: failed with error client error (Connect)",
                "DEBUG weft-agent: kube_runtime: watch error second line status=Some(403)",
            ]
        );
    }

    #[test]
    fn errors_show_their_sources_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("list failed")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(error_chain(&e), "list failed: connection refused");
        let got =
            lines("info", || tracing::warn!(error = &e as &(dyn std::error::Error + 'static), "kube API"));
        assert_eq!(got, ["WARN weft-agent: kube API error=list failed: connection refused"]);
    }

    #[test]
    fn the_node_ends_every_line_once() {
        let got = captured("info", Some("node-1"), || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("agent", node = %"node-1");
            let _g = span.enter();
            tracing::info!("inside");
        });
        assert_eq!(
            got,
            ["INFO weft-agent: outside any span node=node-1", "INFO weft-agent: inside node=node-1"]
        );
    }

    #[test]
    fn the_stdout_line_has_the_log_format() {
        let l = stdout_line(Level::INFO, "ready generation=abc", "node-1");
        let (time, rest) = l.split_once(' ').unwrap();
        assert!(time.ends_with('Z') && time.contains('T'), "{l}");
        assert_eq!(rest, "INFO weft-agent: ready generation=abc node=node-1");
    }
}
