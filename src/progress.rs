//! Progress of a long run (training steps, the stages of `phi data prepare`): an indicatif bar
//! when stderr is a terminal; otherwise — a log file, a pipe, `nohup` — a bar draws nothing,
//! so a plain line goes to stderr instead when the work starts, every [`INTERVAL`] while it
//! goes on (checked at each update) and when it ends. A redirected log is then never silent for
//! minutes. [`PrepareBars`] shows `phi_data::prepare`'s stages this way.
//!
//! The libraries print nothing; they emit their warnings (a checkpoint passed over on resume, an
//! old one not pruned, …) as `tracing` events. [`print_warnings`] installs the subscriber that
//! prints each as a `warning: …` line on stderr the moment it happens, above a bar that is on
//! screen rather than through it.
//!
//! ```no_run
//! use phi::progress::{Progress, Unit};
//!
//! let p = Progress::new(300, "train", Unit::Count("steps"), "{bar:30} {pos}/{len} steps  {msg}");
//! for step in 1..=300 {
//!     p.set_position(step);
//!     p.set_message(format!("loss {:.3}", 2.0));
//! }
//! p.finish();
//! ```

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use phi_data::prepare::{PrepareProgress, Stage};

/// Set by [`hide_all`]: every progress made after it is [`Progress::hidden`].
static ALL_HIDDEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, every [`Progress`] shows nothing: the other ranks of a data-parallel run, whose
/// progress is rank 0's (see [`crate::world`]).
pub fn hide_all() {
    ALL_HIDDEN.store(true, Ordering::Relaxed);
}

/// How often a progress line is written when stderr is not a terminal.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// What the position counts, for the lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `12.0 MiB/48.0 MiB`.
    Bytes,
    /// `12/300 steps`.
    Count(&'static str),
    /// A stage with no count (training a tokenizer): only its start and end.
    Stage,
}

/// A bar or a line writer; clones report to the same progress.
#[derive(Clone)]
pub struct Progress(Inner);

#[derive(Clone)]
enum Inner {
    /// A bar on the terminal, with its number among the [`SHOWN`] ones.
    Bar(ProgressBar, u64),
    Lines(Arc<Mutex<Lines>>),
}

/// The bars on screen (not finished yet), newest last: a line printed while one is drawn goes
/// above it ([`eprintln_above_bars`]).
static SHOWN: Mutex<Vec<(u64, indicatif::WeakProgressBar)>> = Mutex::new(Vec::new());
static NEXT_BAR: AtomicU64 = AtomicU64::new(0);

fn shown(bar: ProgressBar) -> Inner {
    let id = NEXT_BAR.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut s) = SHOWN.lock() {
        // Bars dropped without being finished (a run that failed) are gone from the screen too.
        s.retain(|(_, b)| b.upgrade().is_some());
        s.push((id, bar.downgrade()));
    }
    Inner::Bar(bar, id)
}

fn gone(id: u64) {
    if let Ok(mut s) = SHOWN.lock() {
        s.retain(|(i, _)| *i != id);
    }
}

/// Writes `line` to stderr; with a bar on screen, the bar is lifted for it and drawn again below
/// (so it is neither torn nor overwritten).
pub fn eprintln_above_bars(line: &str) {
    let bar = SHOWN.lock().ok().and_then(|s| s.iter().rev().find_map(|(_, b)| b.upgrade()));
    match bar {
        Some(b) if !b.is_finished() => b.suspend(|| eprintln!("{line}")),
        _ => eprintln!("{line}"),
    }
}

struct Lines {
    out: Box<dyn Write + Send>,
    interval: Duration,
    what: String,
    unit: Unit,
    pos: u64,
    len: u64,
    message: String,
    start: Instant,
    last: Instant,
    done: bool,
}

impl Lines {
    fn write(&mut self, end: bool) {
        let amount = match self.unit {
            Unit::Bytes => format!(": {}/{}", bytes(self.pos), bytes(self.len)),
            Unit::Count(unit) if self.len > 0 => format!(": {}/{} {unit}", self.pos, self.len),
            Unit::Count(unit) => format!(": {} {unit}", self.pos),
            Unit::Stage => String::new(),
        };
        let percent = if self.len > 0 && self.unit != Unit::Stage { format!(" ({:.0}%)", 100.0 * self.pos as f64 / self.len as f64) } else { String::new() };
        let message = if self.message.is_empty() { String::new() } else { format!("  {}", self.message) };
        let state = if end { "done in" } else { "elapsed" };
        // A closed stderr costs the progress line, not the run.
        let _ = writeln!(self.out, "{}{amount}{percent}{message}  [{state} {}]", self.what, clock(self.start.elapsed()));
        let _ = self.out.flush();
        self.last = Instant::now();
    }

    fn update(&mut self) {
        if !self.done && self.last.elapsed() >= self.interval {
            self.write(false);
        }
    }
}

fn bytes(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Progress {
    /// Progress over `len` units of `what` (`train`, `tokenize`): a bar drawn with `template`
    /// (indicatif's; `{prefix}` is `what`) on a terminal, else lines on stderr.
    pub fn new(len: u64, what: &str, unit: Unit, template: &str) -> Self {
        if ALL_HIDDEN.load(Ordering::Relaxed) {
            return Self::hidden();
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(len);
            bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            // `{prefix}` in a template shows `what`.
            bar.set_prefix(what.to_string());
            return Progress(shown(bar));
        }
        Self::lines(Box::new(std::io::stderr()), INTERVAL, len, what, unit)
    }

    /// Lines to `out` every `interval` (what [`new`](Self::new) does off a terminal); a line is
    /// written at once, saying the work started.
    pub fn lines(out: Box<dyn Write + Send>, interval: Duration, len: u64, what: &str, unit: Unit) -> Self {
        let now = Instant::now();
        let mut lines = Lines { out, interval, what: what.to_string(), unit, pos: 0, len, message: String::new(), start: now, last: now, done: false };
        lines.write(false);
        Progress(Inner::Lines(Arc::new(Mutex::new(lines))))
    }

    /// A stage that reports no count (`what` says what it does): a spinner on a terminal, else
    /// a line when it starts and one when it ends.
    pub fn stage(what: &str) -> Self {
        if ALL_HIDDEN.load(Ordering::Relaxed) {
            return Self::hidden();
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            return Progress(shown(bar));
        }
        Self::lines(Box::new(std::io::stderr()), INTERVAL, 0, what, Unit::Stage)
    }

    /// Nothing shown (a library caller that asked for no progress).
    pub fn hidden() -> Self {
        Progress(Inner::Bar(ProgressBar::hidden(), u64::MAX))
    }

    fn with(&self, f: impl FnOnce(&mut Lines)) {
        if let Inner::Lines(l) = &self.0 {
            // A poisoned lock means a panic elsewhere: progress is not worth a second one.
            if let Ok(mut l) = l.lock() {
                f(&mut l);
            }
        }
    }

    pub fn set_position(&self, pos: u64) {
        match &self.0 {
            Inner::Bar(b, _) => b.set_position(pos),
            Inner::Lines(_) => self.with(|l| {
                l.pos = pos;
                l.update();
            }),
        }
    }

    pub fn inc(&self, n: u64) {
        match &self.0 {
            Inner::Bar(b, _) => b.inc(n),
            Inner::Lines(_) => self.with(|l| {
                l.pos += n;
                l.update();
            }),
        }
    }

    pub fn set_length(&self, len: u64) {
        match &self.0 {
            Inner::Bar(b, _) => b.set_length(len),
            Inner::Lines(_) => self.with(|l| l.len = len),
        }
    }

    /// The text after the position (`loss 2.345`); a line shows the latest.
    pub fn set_message(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.0 {
            Inner::Bar(b, _) => b.set_message(message),
            Inner::Lines(_) => self.with(|l| l.message = message),
        }
    }

    /// The end: the bar stays drawn; a last line is written.
    pub fn finish(&self) {
        match &self.0 {
            Inner::Bar(b, id) => {
                b.finish();
                gone(*id);
            }
            Inner::Lines(_) => self.with(|l| {
                if !l.done {
                    l.done = true;
                    l.write(true);
                }
            }),
        }
    }

    /// The end: the bar is cleared (the caller prints its own summary); a last line is written
    /// all the same, since a log keeps what a terminal clears.
    pub fn finish_and_clear(&self) {
        match &self.0 {
            Inner::Bar(b, id) => {
                b.finish_and_clear();
                gone(*id);
            }
            Inner::Lines(_) => self.finish(),
        }
    }

    /// Ends a stage that did not finish (an error cut it short): a bar is cleared, and off a
    /// terminal no `[done …]` line is written for it.
    pub fn abandon(&self) {
        match &self.0 {
            Inner::Bar(b, id) => {
                b.finish_and_clear();
                gone(*id);
            }
            Inner::Lines(_) => self.with(|l| l.done = true),
        }
    }
}

/// `phi data prepare`'s stages as bars (or lines off a terminal): a byte bar for the filter
/// stages, a spinner while the tokenizer trains, a document bar while tokenizing; each cleared
/// when its stage ends.
#[derive(Default)]
pub struct PrepareBars(Mutex<Option<Progress>>);

impl PrepareBars {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PrepareProgress for PrepareBars {
    fn start(&self, stage: Stage, len: Option<(u64, phi_data::prepare::Unit)>) {
        let what = stage.to_string();
        let p = match len {
            None => Progress::stage(&what),
            Some((len, phi_data::prepare::Unit::Bytes)) => Progress::new(
                len,
                &what,
                Unit::Bytes,
                "{prefix:>14} {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} [{elapsed_precise} < {eta_precise}]",
            ),
            Some((len, phi_data::prepare::Unit::Documents)) => {
                Progress::new(len, &what, Unit::Count("documents"), "{prefix:>14} {bar:30} {pos}/{len} documents [{elapsed_precise} < {eta_precise}]")
            }
        };
        if let Ok(mut current) = self.0.lock() {
            *current = Some(p);
        }
    }

    fn advance(&self, _stage: Stage, n: u64) {
        if let Some(p) = self.0.lock().ok().and_then(|c| c.clone()) {
            p.inc(n);
        }
    }

    fn finish(&self, _stage: Stage) {
        if let Some(p) = self.0.lock().ok().and_then(|mut c| c.take()) {
            p.finish_and_clear();
        }
    }
}

impl Drop for PrepareBars {
    /// A stage cut short by an error: its bar goes, and nothing says it is done.
    fn drop(&mut self) {
        if let Some(p) = self.0.get_mut().ok().and_then(Option::take) {
            p.abandon();
        }
    }
}

/// Installs the `tracing` subscriber of the `phi` tool, unless the program has one: every
/// warning of phi's libraries and of this layer (target `phi*`, level `WARN` and above; the
/// server's request log excepted, `phi serve` has its own) is printed on stderr as
/// `warning: <message>` when it is emitted, above any bar on screen. Without it the libraries
/// print nothing. The layer's entry points ([`crate::recipes::run`], [`crate::finetune::run`],
/// [`crate::dpo_run::train`], [`crate::experiment::run`]) call it; calling it again does nothing.
pub fn print_warnings() {
    print_events(tracing_subscriber::filter::LevelFilter::WARN);
}

/// [`print_warnings`] for errors only: the other ranks of a data-parallel run, whose warnings
/// rank 0 prints (they are the same run's).
pub fn print_errors() {
    print_events(tracing_subscriber::filter::LevelFilter::ERROR);
}

fn print_events(level: tracing_subscriber::filter::LevelFilter) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = Targets::new().with_target("phi", level).with_target("phi_serve", LevelFilter::OFF);
    // Fails only when a subscriber is installed already, which then gets the events.
    let _ = tracing_subscriber::registry().with(WarningLines.with_filter(filter)).try_init();
}

/// Prints each event as `warning: <message>` (`error: …` for errors), with any other fields
/// after the message as `key=value`.
struct WarningLines;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String, Vec<String>);
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "message" => self.0 = value.to_string(),
                    name => self.1.push(format!("{name}={value}")),
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.0 = format!("{value:?}"),
                    name => self.1.push(format!("{name}={value:?}")),
                }
            }
        }
        let mut f = Fields(String::new(), Vec::new());
        event.record(&mut f);
        let kind = if *event.metadata().level() == tracing::Level::ERROR { "error" } else { "warning" };
        let mut line = format!("{kind}: {}", f.0);
        for extra in f.1 {
            line = format!("{line} {extra}");
        }
        eprintln_above_bars(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn off_a_terminal_lines_come_at_the_start_at_intervals_and_at_the_end() {
        let out = Shared::default();
        let p = Progress::lines(Box::new(out.clone()), Duration::from_millis(40), 5, "train", Unit::Count("steps"));
        assert!(out.text().starts_with("train: 0/5 steps (0%)  [elapsed 00:00:00]\n"), "{}", out.text());
        p.set_message("loss 2.000");
        p.set_position(1);
        // Within the interval: nothing more.
        assert_eq!(out.text().lines().count(), 1);
        std::thread::sleep(Duration::from_millis(60));
        p.set_position(2);
        assert_eq!(out.text().lines().nth(1).unwrap(), "train: 2/5 steps (40%)  loss 2.000  [elapsed 00:00:00]");
        p.set_position(5);
        p.finish();
        p.finish();
        let text = out.text();
        assert_eq!(text.lines().last().unwrap(), "train: 5/5 steps (100%)  loss 2.000  [done in 00:00:00]");
        assert_eq!(text.lines().count(), 3, "one end line, however often finish is called: {text}");
    }

    #[test]
    fn a_stage_says_when_it_starts_and_ends() {
        let out = Shared::default();
        let p = Progress::lines(Box::new(out.clone()), INTERVAL, 0, "training a tokenizer", Unit::Stage);
        p.finish_and_clear();
        assert_eq!(out.text(), "training a tokenizer  [elapsed 00:00:00]\ntraining a tokenizer  [done in 00:00:00]\n");
    }

    #[test]
    fn bytes_are_shown_in_mib() {
        let out = Shared::default();
        let p = Progress::lines(Box::new(out.clone()), Duration::from_secs(3600), 4 << 20, "filter + dedup", Unit::Bytes);
        p.inc(1 << 20);
        p.finish_and_clear();
        assert_eq!(out.text().lines().last().unwrap(), "filter + dedup: 1.0 MiB/4.0 MiB (25%)  [done in 00:00:00]");
    }
}
