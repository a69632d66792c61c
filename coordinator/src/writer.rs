//! The writer thread: takes the JobManager's changes off its thread, encodes the
//! task records and probe results, writes everything queued since its last turn
//! as one atomic write (a later record for a key replaces an earlier one),
//! flushes once, then answers every caller waiting on those changes (group
//! commit). The actor's thread only decides and copies; at 1,000 workers the
//! sled work was half its time.

use crate::store::{Changed, Rows, Store};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// A write and flush slower than this is logged: every caller waiting on it waited that long.
const SLOW: Duration = Duration::from_millis(50);

/// A turn takes queued changes until they hold this many records (a single larger change is
/// still written whole: each change is atomic). A burst of probe completions (100 jobs of 1,000
/// segments, closed loop) otherwise went to sled as one transaction of 100,000 task records,
/// whose write set and encoded copies lifted the coordinator's peak RSS past 500 MB.
const TURN_RECORDS: usize = 10_000;

/// Told once everything queued before it is on disk (or why not).
pub type FlushWaiter = tokio::sync::oneshot::Sender<Result<(), String>>;

enum Msg {
    Rows(Changed),
    Wait(FlushWaiter),
}

/// The JobManager's end of the writer thread.
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

impl Writer {
    /// Starts the thread.
    pub fn spawn(store: Store, turns: prometheus::Histogram) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Msg>();
        std::thread::Builder::new()
            .name("fw-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let batch = turn(first, &rx);
                    let t = Instant::now();
                    let (rows, waiters, unencoded) = merge(batch);
                    // What encoded is written; a record that did not is reported to its callers.
                    let r = store
                        .write(&rows)
                        .and_then(|_| store.flush())
                        .map_err(|e| e.to_string())
                        .and_then(|_| unencoded.map_or(Ok(()), Err));
                    turns.observe(t.elapsed().as_secs_f64());
                    if t.elapsed() > SLOW {
                        warn!(ms = t.elapsed().as_millis() as u64, records = rows.jobs.len() + rows.tasks.len(), callers = waiters.len(), "slow state write");
                    }
                    if let Err(e) = &r {
                        error!(error = %e, records = rows.jobs.len() + rows.tasks.len(), "could not write the coordinator state");
                    }
                    for w in waiters {
                        let _ = w.send(r.clone());
                    }
                }
            })?;
        Ok(Self { tx })
    }

    /// Queues records to write (in order with everything queued before).
    pub fn write(&self, rows: Changed) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Msg::Rows(rows))
            .map_err(|_| "the state writer thread stopped".to_string())
    }

    /// Answers once everything queued so far is written and flushed.
    pub fn flushed(&self) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // If the thread is gone the sender drops and the receiver reports it.
        let _ = self.tx.send(Msg::Wait(tx));
        rx
    }
}

/// A turn's messages: `first`, then whatever is queued behind it, in order, until the changes
/// hold `TURN_RECORDS` records (the rest waits for the next turn, answered after it).
fn turn(first: Msg, rx: &mpsc::Receiver<Msg>) -> Vec<Msg> {
    let mut records = first.records();
    let mut batch = vec![first];
    while records < TURN_RECORDS {
        match rx.try_recv() {
            Ok(m) => {
                records += m.records();
                batch.push(m);
            }
            Err(_) => break,
        }
    }
    batch
}

impl Msg {
    /// The records a message writes (a waiter writes none).
    fn records(&self) -> usize {
        match self {
            Msg::Rows(c) => c.records(),
            Msg::Wait(_) => 0,
        }
    }
}

/// One write for a turn's messages: the last record per key, the callers to answer, and why
/// a change could not be encoded, if one could not.
fn merge(batch: Vec<Msg>) -> (Rows, Vec<FlushWaiter>, Option<String>) {
    let mut jobs = BTreeMap::new();
    let mut tasks = BTreeMap::new();
    let mut media = BTreeMap::new();
    let mut waiters = Vec::new();
    let mut unencoded = None;
    for m in batch {
        match m {
            Msg::Rows(c) => match c.encode() {
                Ok(r) => {
                    jobs.extend(r.jobs);
                    tasks.extend(r.tasks);
                    media.extend(r.media);
                }
                Err(e) => {
                    error!(error = %e, "could not encode a state change");
                    unencoded = Some(e.to_string());
                }
            },
            Msg::Wait(w) => waiters.push(w),
        }
    }
    let rows = Rows {
        jobs: jobs.into_iter().collect(),
        tasks: tasks.into_iter().collect(),
        media: media.into_iter().collect(),
    };
    (rows, waiters, unencoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_records_replace_earlier_and_waiters_are_kept() {
        let row = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let batch = vec![
            Msg::Rows(
                Rows {
                    jobs: vec![row("j", "1")],
                    tasks: vec![row("t1", "a"), row("t2", "b")],
                    media: vec![row("j", "m")],
                }
                .into(),
            ),
            Msg::Wait(tx),
            Msg::Rows(
                Rows {
                    jobs: vec![],
                    tasks: vec![row("t1", "c")],
                    media: vec![],
                }
                .into(),
            ),
        ];
        let (rows, waiters, unencoded) = merge(batch);
        assert_eq!(unencoded, None);
        assert_eq!(rows.jobs, vec![row("j", "1")]);
        assert_eq!(rows.tasks, vec![row("t1", "c"), row("t2", "b")]);
        assert_eq!(rows.media, vec![row("j", "m")]);
        assert_eq!(waiters.len(), 1);
    }

    #[test]
    fn a_turn_stops_taking_changes_at_the_record_bound_but_never_splits_one() {
        let change = |n: usize| {
            Msg::Rows(
                Rows {
                    tasks: (0..n).map(|i| (i.to_be_bytes().to_vec(), vec![])).collect(),
                    ..Rows::default()
                }
                .into(),
            )
        };
        let (tx, rx) = mpsc::channel();
        for n in [6_000, 3_000, 2_000, 500] {
            tx.send(change(n)).unwrap();
        }
        let (w, _) = tokio::sync::oneshot::channel();
        tx.send(Msg::Wait(w)).unwrap();
        let records = |b: &[Msg]| b.iter().map(Msg::records).sum::<usize>();
        let first = rx.recv().unwrap();
        let one = turn(first, &rx);
        assert_eq!(
            (one.len(), records(&one)),
            (3, 11_000),
            "6,000 + 3,000 + 2,000"
        );
        let next = rx.recv().unwrap();
        let two = turn(next, &rx);
        assert_eq!(
            (two.len(), records(&two)),
            (2, 500),
            "the rest, and the waiter after it"
        );
        let big = turn(change(25_000), &rx);
        assert_eq!(records(&big), 25_000, "one change is written whole");
    }

    #[test]
    fn a_waiter_is_answered_after_the_rows_before_it_are_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = Writer::spawn(store.clone(), crate::metrics::Metrics::new().state_write).unwrap();
        let rows = |n: u32| Rows {
            tasks: vec![(n.to_be_bytes().to_vec(), b"{}".to_vec())],
            ..Rows::default()
        };
        for n in 0..100 {
            w.write(rows(n).into()).unwrap();
        }
        let rx = w.flushed();
        assert_eq!(rx.blocking_recv().unwrap(), Ok(()));
        assert_eq!(store.task_count(), 100);
    }
}
