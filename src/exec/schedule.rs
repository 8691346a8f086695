//! The parallel scheduler: runs the stages of a build that must run, in
//! dependency order, and collects every stage's cache entry.
//!
//! A small dependency queue. A stage starts when all its stage inputs are
//! done, at most `jobs` at a time, each on its own thread. Only the calling
//! thread reports progress (through the `on` callback); workers send their
//! events to it over a channel. After a failure no new stage starts; the
//! running ones finish and are cached.

use std::sync::mpsc;
use std::time::Duration;

use super::build::{BuildError, Origin, Planned, Progress, TICK};
use super::cache::Entry;
use super::stage::{self, Context, Event, Job, StageError};

/// What a worker sends to the calling thread.
enum Msg {
    Event(Event),
    Done(Box<Result<Entry, StageError>>),
}

/// Runs the stages of `planned` that must run, in dependency order, in
/// parallel; returns every stage's entry (run or cached), in plan order.
pub(super) fn run(
    planned: &[Planned<'_>],
    ctx: &Context<'_>,
    jobs: usize,
    session: Option<String>,
    on: &mut dyn FnMut(Progress),
) -> Result<Vec<Entry>, BuildError> {
    let n = planned.len();
    let mut done: Vec<Option<Entry>> = planned
        .iter()
        .map(|p| if p.run { None } else { p.hit.clone() })
        .collect();
    let mut started: Vec<bool> = done.iter().map(Option::is_some).collect();
    let mut failures: Vec<(String, StageError)> = Vec::new();
    let (tx, rx) = mpsc::channel::<(usize, Msg)>();
    std::thread::scope(|scope| {
        let mut running = 0usize;
        loop {
            if failures.is_empty() {
                for i in 0..n {
                    if running >= jobs {
                        break;
                    }
                    if started[i] || !planned[i].deps.iter().all(|&d| done[d].is_some()) {
                        continue;
                    }
                    started[i] = true;
                    running += 1;
                    let job = job_for(&planned[i], &done, &session);
                    let tx = tx.clone();
                    on(Progress::Started(name(planned, i)));
                    scope.spawn(move || {
                        let mut emit = |e: Event| {
                            let _ = tx.send((i, Msg::Event(e)));
                        };
                        let r = match &job.resign {
                            Some(hit) => stage::resign(&job, hit, ctx, &mut emit),
                            None => stage::run(&job, ctx, &mut emit),
                        };
                        let _ = tx.send((i, Msg::Done(Box::new(r))));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let (i, msg) = match rx.recv_timeout(TICK) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    on(Progress::Tick);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if let Some(result) = report(name(planned, i), msg, on) {
                running -= 1;
                match result {
                    Ok(entry) => done[i] = Some(entry),
                    Err(e) => failures.push((name(planned, i), e)),
                }
            }
        }
    });
    fold(failures)?;
    done.into_iter()
        .enumerate()
        .map(|(i, d)| {
            d.ok_or_else(|| BuildError::Input {
                stage: name(planned, i),
                message: "was not built".into(),
            })
        })
        .collect()
}

fn name(planned: &[Planned<'_>], i: usize) -> String {
    planned[i].package.pkg.name.value.clone()
}

/// What a worker needs to run stage `p`, its stage inputs taken from the
/// entries `done` holds.
fn job_for(p: &Planned<'_>, done: &[Option<Entry>], session: &Option<String>) -> Job {
    Job {
        package: p.package.clone(),
        key: p.key.clone(),
        fingerprint: p.fingerprint.clone(),
        inputs: p
            .inputs
            .iter()
            .map(|(input, origin)| {
                let out = match origin {
                    Origin::Stage(d) => done[*d].as_ref().map(Entry::out).unwrap_or_default(),
                    Origin::Image(_, path) => path.clone().unwrap_or_default(),
                };
                (input.clone(), out)
            })
            .collect(),
        pkgdir: p.pkgdir.clone(),
        session: if p.in_session { session.clone() } else { None },
        resign: if p.resign { p.hit.clone() } else { None },
    }
}

/// Reports a worker's message about `stage`; returns the stage's result
/// when it is done.
fn report(
    stage: String,
    msg: Msg,
    on: &mut dyn FnMut(Progress),
) -> Option<Result<Entry, StageError>> {
    match msg {
        Msg::Event(Event::Phase(phase)) => on(Progress::Phase { stage, phase }),
        Msg::Event(Event::Line(line)) => on(Progress::Line { stage, line }),
        Msg::Event(Event::Note(note)) => on(Progress::Note { stage, note }),
        Msg::Done(r) => {
            match &*r {
                Ok(entry) => on(Progress::Finished {
                    stage,
                    elapsed: Duration::from_millis(entry.meta.duration_ms),
                }),
                Err(_) => on(Progress::Failed { stage }),
            }
            return Some(*r);
        }
    }
    None
}

/// One failure as itself; several folded into one error naming each.
fn fold(mut failures: Vec<(String, StageError)>) -> Result<(), BuildError> {
    if failures.len() > 1 {
        let total = failures.len();
        // Report every failure but the last through the progress stream's
        // owner: the caller prints the returned error; the others are
        // folded into it.
        let mut msg = String::new();
        for (stage, e) in &failures {
            msg.push_str(&format!("stage {stage}: {e}\n"));
        }
        return Err(BuildError::Input {
            stage: failures[0].0.clone(),
            message: format!("{total} stages failed:\n{msg}"),
        });
    }
    if let Some((stage, e)) = failures.pop() {
        return Err(BuildError::Stage {
            stage,
            error: Box::new(e),
        });
    }
    Ok(())
}
