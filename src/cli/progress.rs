//! The build's progress display, owned by the thread that runs the build.
//!
//! On a terminal: one live spinner line per running stage (elapsed time,
//! phase, last log line). Without one (CI logs, pipes): plain lines, and for
//! every running stage a heartbeat at least every `interval` with the same
//! three facts, so a reader can tell a slow stage from a hung one. The
//! scheduler reports `Progress::Tick` when nothing else happens, so the
//! heartbeat does not depend on the stage printing anything.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::exec::Progress;
use crate::exec::remote::RemoteEvent;
use crate::exec::sources::Origin;

/// `12.3s` under a minute, `4m05s` above.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

/// `812 B`, `3.4 MiB`, `1.6 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A fetch at least this large is announced before it starts (unpacking
/// a kernel tree of this size takes seconds).
const LONG_FETCH: u64 = 16 << 20;

/// One line on what the shared cache did.
pub fn remote_line(e: &RemoteEvent) -> String {
    match e {
        RemoteEvent::Fetching {
            stage,
            from,
            bytes: n,
        } => format!("{stage}: fetching {} from {from}", bytes(*n)),
        RemoteEvent::Fetched {
            stage,
            from,
            bytes: n,
        } => {
            format!("{stage}: fetched from {from} ({})", bytes(*n))
        }
        RemoteEvent::Stored {
            stage,
            to,
            bytes: n,
        } => {
            format!("{stage}: stored in {to} ({} sent)", bytes(*n))
        }
        RemoteEvent::Present { stage, to } => format!("{stage}: already in {to}"),
        RemoteEvent::Warning(w) => format!("warning: {w}"),
    }
}

/// What is known of a running stage.
struct Running {
    started: Instant,
    /// When a line about it was last printed (plain mode).
    reported: Instant,
    phase: String,
    last_line: String,
    bar: Option<ProgressBar>,
}

/// The progress display.
pub struct View {
    verbose: u8,
    interval: Duration,
    multi: Option<MultiProgress>,
    running: HashMap<String, Running>,
}

impl View {
    pub fn new(verbose: u8, interval: Duration) -> View {
        let tty = std::io::stderr().is_terminal();
        View {
            verbose,
            interval,
            multi: tty.then(MultiProgress::new),
            running: HashMap::new(),
        }
    }

    fn say(&self, line: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn show(&mut self, p: Progress) {
        match p {
            Progress::WaitingForLock(dir) => self.say(format!(
                "waiting for another composer using the cache {}",
                dir.display()
            )),
            Progress::Planned {
                stage,
                cached,
                reasons,
            } => self.planned(&stage, cached, &reasons),
            Progress::SessionStarted {
                id,
                description,
                stages,
            } => self.say(format!(
                "signing session {} ({description}) for {}",
                &id[..16.min(id.len())],
                stages.join(", ")
            )),
            Progress::SessionReused { id } => {
                if self.verbose > 0 {
                    self.say(format!(
                        "signing session {}: all its stages are cached",
                        &id[..16.min(id.len())]
                    ));
                }
            }
            Progress::Source(f) => match f.origin {
                Origin::Fetched(from) => {
                    self.say(format!("{}: fetched {from}", f.stages.join(", ")))
                }
                Origin::Cached => {
                    if self.verbose > 0 {
                        self.say(format!("{}: {} cached", f.stages.join(", "), f.url));
                    }
                }
            },
            Progress::Started(stage) => self.started(stage),
            Progress::Phase { stage, phase } => self.phase(&stage, phase),
            Progress::Line { stage, line } => self.line(&stage, line),
            Progress::Note { stage, note } => self.say(format!("{stage}: {note}")),
            Progress::Finished { stage, elapsed } => {
                self.stop(&stage);
                self.say(format!("{stage}: built in {}", human(elapsed)));
            }
            Progress::Failed { stage } => {
                let t = self.stop(&stage).map(human).unwrap_or_default();
                self.say(format!("{stage}: FAILED after {t}"));
            }
            Progress::Tick => {}
            Progress::Exported { target, path } => {
                if self.verbose > 0 {
                    self.say(format!("{target}: output in {}", path.display()));
                }
            }
            Progress::Remote(e) => self.remote(e),
        }
        self.heartbeat();
    }

    /// What the shared cache did; without `-v`, entries already stored
    /// are not listed and a fetch is announced only when it is long work.
    fn remote(&self, e: RemoteEvent) {
        let quiet = match &e {
            RemoteEvent::Present { .. } => true,
            RemoteEvent::Fetching { bytes, .. } => *bytes < LONG_FETCH,
            _ => false,
        };
        if self.verbose > 0 || !quiet {
            self.say(remote_line(&e));
        }
    }

    fn planned(&self, stage: &str, cached: bool, reasons: &[String]) {
        if self.verbose == 0 {
            return;
        }
        if cached {
            self.say(format!("{stage}: cached"));
        } else {
            self.say(format!("{stage}: to build, because:"));
            for r in reasons {
                self.say(format!("    {r}"));
            }
        }
    }

    fn started(&mut self, stage: String) {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(stage.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_none() {
            eprintln!("{stage}: started");
        }
        let now = Instant::now();
        self.running.insert(
            stage,
            Running {
                started: now,
                reported: now,
                phase: String::new(),
                last_line: String::new(),
                bar,
            },
        );
    }

    fn phase(&mut self, stage: &str, phase: String) {
        let plain = self.multi.is_none();
        let Some(r) = self.running.get_mut(stage) else {
            return;
        };
        if let Some(bar) = &r.bar {
            bar.set_message(phase.clone());
        } else if plain && self.verbose > 0 {
            eprintln!("{stage}: {phase}");
            r.reported = Instant::now();
        }
        r.phase = phase;
    }

    fn line(&mut self, stage: &str, line: String) {
        let Some(r) = self.running.get_mut(stage) else {
            return;
        };
        let line: String = line.chars().take(120).collect();
        if let Some(bar) = &r.bar {
            bar.set_message(format!("{}: {line}", r.phase));
        } else if self.verbose > 1 {
            eprintln!("{stage}| {line}");
            r.reported = Instant::now();
        }
        r.last_line = line;
    }

    /// Forgets a stage; how long it ran.
    fn stop(&mut self, stage: &str) -> Option<Duration> {
        let r = self.running.remove(stage)?;
        if let Some(bar) = r.bar {
            bar.finish_and_clear();
        }
        Some(r.started.elapsed())
    }

    /// Plain mode: a line for each stage not reported for `interval`.
    fn heartbeat(&mut self) {
        if self.multi.is_some() {
            return;
        }
        let mut names: Vec<&String> = self.running.keys().collect();
        names.sort();
        let mut due = Vec::new();
        for name in names {
            let r = &self.running[name];
            if r.reported.elapsed() >= self.interval {
                due.push(name.clone());
            }
        }
        for name in due {
            let Some(r) = self.running.get_mut(&name) else {
                continue;
            };
            let phase = if r.phase.is_empty() {
                "starting"
            } else {
                &r.phase
            };
            let last = if r.last_line.is_empty() {
                String::new()
            } else {
                format!(", last output: {}", r.last_line)
            };
            eprintln!(
                "{name}: still running after {}, {phase}{last}",
                human(r.started.elapsed())
            );
            r.reported = Instant::now();
        }
    }

    pub fn clear(&mut self) {
        for (_, r) in self.running.drain() {
            if let Some(bar) = r.bar {
                bar.finish_and_clear();
            }
        }
    }
}
