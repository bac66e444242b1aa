//! The agent's log: `tracing` events on stderr, one line each, as
//! `TIME LEVEL weft-agent: MESSAGE key=value ...`, the fields of the event
//! first, then those of the spans it is in (e.g. `node=`). The message comes
//! right after `weft-agent: `, so a line can be found by its text (tests and
//! the demo look for `weft-agent: denied {json}`). The level is an
//! `EnvFilter` directive: `--log-level`, else `WEFT_LOG`, else `RUST_LOG`,
//! else `info`.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

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

/// The one-line format described in the module doc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Line {
    /// Without a timestamp (tests compare whole lines).
    pub no_time: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if !self.no_time {
            SystemTime.format_time(&mut w)?;
            w.write_char(' ')?;
        }
        write!(w, "{} weft-agent: ", event.metadata().level())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        for span in ctx.event_scope().into_iter().flat_map(|s| s.from_root()) {
            let ext = span.extensions();
            if let Some(fields) = ext.get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                write!(w, " {fields}")?;
            }
        }
        writeln!(w)
    }
}

/// A subscriber with `Line` format and the given directives (invalid
/// directives fall back to `DEFAULT_LEVEL`), writing to `writer`.
pub fn subscriber<W>(directives: &str, writer: W, no_time: bool) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder().parse(directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .event_format(Line { no_time })
        .with_writer(writer)
        .finish()
}

/// Installs the stderr subscriber for the whole process; a second call is a no-op.
pub fn init(directives: &str) {
    let _ = tracing::subscriber::set_global_default(subscriber(directives, std::io::stderr, false));
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    fn lines(directives: &str, f: impl FnOnce()) -> Vec<String> {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber(directives, buf.clone(), true), f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(String::from).collect()
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
}
