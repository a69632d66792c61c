//! sled persistence: trees `jobs` and `tasks` (JSON records with a version
//! field), `media` (each job's probe result, apart from the job record, which is
//! rewritten on every state change while this one holds every frame's
//! timestamp and is written once) and `meta` (schema version). The JobManager takes the
//! records a change touched (`changed`: jobs encoded, tasks and probe results copied); the
//! writer thread (`writer.rs`) encodes the rest, writes them atomically and flushes before the
//! caller is answered.

use crate::model::{Job, Media, Task, SCHEMA_VERSION};
use crate::scheduler::{Changes, State};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;
use thiserror::Error;

/// Why the state database could not be used.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state database {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("state database: {0}")]
    Io(String),
    #[error("state database: record {key}: {detail}")]
    Decode { key: String, detail: String },
    #[error("state database was written by a newer framewise (schema {found}, this one reads up to {SCHEMA_VERSION})")]
    Newer { found: u32 },
}

/// Encoded records to write, keyed; a later row for the same key replaces an earlier one.
#[derive(Debug, Default)]
pub struct Rows {
    pub jobs: Vec<(Vec<u8>, Vec<u8>)>,
    pub tasks: Vec<(Vec<u8>, Vec<u8>)>,
    pub media: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Rows {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.tasks.is_empty() && self.media.is_empty()
    }
}

/// The records a change touched, as the JobManager hands them to the writer thread: job
/// records encoded (small: the probe result is stored apart), tasks and probe results copied
/// for the writer to encode, off the actor's thread (a probe's completion adds a thousand
/// tasks: 1.6–2.0 ms of JSON there).
#[derive(Debug, Default)]
pub struct Changed {
    pub rows: Rows,
    pub tasks: Vec<(Vec<u8>, Task)>,
    pub media: Vec<(Vec<u8>, Media)>,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.tasks.is_empty() && self.media.is_empty()
    }

    /// How many records the change writes (the writer bounds a turn by it).
    pub fn records(&self) -> usize {
        self.rows.jobs.len()
            + self.rows.tasks.len()
            + self.rows.media.len()
            + self.tasks.len()
            + self.media.len()
    }

    /// Encodes what is still a record (on the writer thread).
    pub fn encode(self) -> Result<Rows, StoreError> {
        let mut rows = self.rows;
        for (k, t) in self.tasks {
            rows.tasks.push((k, encode(&t)?));
        }
        for (k, m) in self.media {
            rows.media.push((k, encode(&m)?));
        }
        Ok(rows)
    }
}

impl From<Rows> for Changed {
    fn from(rows: Rows) -> Self {
        Self {
            rows,
            ..Self::default()
        }
    }
}

/// The coordinator's durable state (cheap to clone: sled handles are shared).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    tasks: sled::Tree,
    workers: sled::Tree,
    media: sled::Tree,
}

/// How long opening waits for another handle's file lock to go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// sled's page cache (bytes).
const CACHE_BYTES: u64 = 64 << 20;

fn task_key(job: &str, index: u32) -> Vec<u8> {
    let mut k = job.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: dir.display().to_string(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
        // sled's page cache defaults to 1 GiB; the state's working set is far smaller, and
        // the coordinator's memory must stay bounded (measured: 570 MB at 100,000 tasks).
        let open = || {
            sled::Config::new()
                .path(dir)
                .cache_capacity(CACHE_BYTES)
                .open()
        };
        // The file lock of a store just closed (sled's background flusher lets go a moment
        // after the last handle, and a restarted coordinator may start while the old process
        // exits) is waited for, up to LOCK_WAIT; a store really in use is still refused.
        let t = std::time::Instant::now();
        let db = loop {
            match open() {
                // sled reports it as ErrorKind::Other with this message.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && t.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => break r.map_err(|e| open_err(&e))?,
            }
        };
        let meta = db.open_tree("meta").map_err(|e| open_err(&e))?;
        match meta.get("schema").map_err(|e| open_err(&e))? {
            Some(v) => {
                let found = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u32::MAX);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Newer { found });
                }
            }
            None => {
                meta.insert("schema", SCHEMA_VERSION.to_string().as_bytes())
                    .map_err(|e| open_err(&e))?;
            }
        }
        let jobs = db.open_tree("jobs").map_err(|e| open_err(&e))?;
        let tasks = db.open_tree("tasks").map_err(|e| open_err(&e))?;
        let workers = db.open_tree("workers").map_err(|e| open_err(&e))?;
        let media = db.open_tree("media").map_err(|e| open_err(&e))?;
        Ok(Self {
            db,
            jobs,
            tasks,
            workers,
            media,
        })
    }

    /// Every stored job (with its probe result) and task. A job written before the probe
    /// result had its own tree carries it inline: it is copied to the media tree here, since
    /// the job's next write leaves it out.
    pub fn load(&self) -> Result<(Vec<Job>, Vec<Task>), StoreError> {
        let io = |e: sled::Error| StoreError::Io(e.to_string());
        let mut jobs = Vec::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv.map_err(io)?;
            let mut job: Job = decode(&k, &v)?;
            match self.media.get(&k).map_err(io)? {
                Some(m) => job.media = Some(decode(&k, &m)?),
                None => {
                    if let Some(m) = &job.media {
                        self.media.insert(&k, encode(m)?).map_err(io)?;
                    }
                }
            }
            jobs.push(job);
        }
        let mut tasks = Vec::new();
        for kv in self.tasks.iter() {
            let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            tasks.push(decode(&k, &v)?);
        }
        Ok((jobs, tasks))
    }

    /// Every worker that ever registered.
    pub fn load_workers<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.workers.iter() {
            let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            out.push((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Records a worker's registration.
    pub fn put_worker<T: serde::Serialize>(&self, id: &str, info: &T) -> Result<(), StoreError> {
        self.workers
            .insert(id.as_bytes(), encode(info)?)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(())
    }

    /// How many task records are stored (tests).
    #[cfg(test)]
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Writes the changed records of `state` at once (not yet flushed: see `flush`).
    pub fn persist(&self, state: &State, ch: &Changes) -> Result<(), StoreError> {
        self.write(&rows(state, ch)?)
    }

    /// Writes rows atomically (not yet flushed: see `flush`).
    pub fn write(&self, rows: &Rows) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (job_rows, task_rows, media_rows) = (&rows.jobs, &rows.tasks, &rows.media);
        // One tree changed (most leases and commits touch tasks only): a batch is atomic within
        // a tree and much cheaper than a transaction across several.
        let changed: Vec<_> = [
            (&self.jobs, job_rows),
            (&self.tasks, task_rows),
            (&self.media, media_rows),
        ]
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .collect();
        if let [(tree, rows)] = changed[..] {
            let mut batch = sled::Batch::default();
            for (k, v) in rows {
                batch.insert(k.as_slice(), v.as_slice());
            }
            return tree
                .apply_batch(batch)
                .map_err(|e| StoreError::Io(e.to_string()));
        }
        (&self.jobs, &self.tasks, &self.media)
            .transaction(|(jt, tt, mt)| {
                for (k, v) in job_rows {
                    jt.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in task_rows {
                    tt.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in media_rows {
                    mt.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| StoreError::Io(format!("{e:?}")))?;
        Ok(())
    }
}

/// The records a change touched, taken on the JobManager's thread (see `Changed`).
pub fn changed(state: &State, ch: &Changes) -> Result<Changed, StoreError> {
    let mut out = Changed::default();
    for id in &ch.jobs {
        if let Some(j) = state.jobs.get(id) {
            out.rows.jobs.push((id.as_bytes().to_vec(), encode(j)?));
        }
    }
    for (j, i) in &ch.tasks {
        if let Some(t) = state.tasks.get(&(j.clone(), *i)) {
            out.tasks.push((task_key(j, *i), t.clone()));
        }
    }
    for id in &ch.media {
        if let Some(m) = state.jobs.get(id).and_then(|j| j.media.as_ref()) {
            out.media.push((id.as_bytes().to_vec(), m.clone()));
        }
    }
    Ok(out)
}

/// The records a change touched, encoded.
pub fn rows(state: &State, ch: &Changes) -> Result<Rows, StoreError> {
    changed(state, ch)?.encode()
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Decode {
        key: String::from_utf8_lossy(k).into_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rules = crate::scheduler::tests::rules();
        let mut s = State::default();
        {
            let store = Store::open(dir.path()).unwrap();
            let (_, _, ch) = s.submit(crate::scheduler::tests::new_job("j1", ""), 5, &rules);
            store.persist(&s, &ch).unwrap();
            let (_, ch) = s.lease("w", "l1".into(), 6, &rules).unwrap();
            store.persist(&s, &ch).unwrap();
        }
        assert_reloads(dir.path(), &s);
    }

    /// Reopens the store and checks it holds exactly `s`'s jobs and tasks; returns the jobs.
    fn assert_reloads(dir: &std::path::Path, s: &State) -> Vec<crate::model::Job> {
        let (jobs, tasks) = Store::open(dir).unwrap().load().unwrap();
        assert_eq!(jobs, s.jobs.values().cloned().collect::<Vec<_>>());
        assert_eq!(tasks, s.tasks.values().cloned().collect::<Vec<_>>());
        jobs
    }

    #[test]
    fn the_probe_result_is_written_once_apart_from_the_job_record() {
        use crate::scheduler::Completion;
        let dir = tempfile::tempdir().unwrap();
        let rules = crate::scheduler::tests::rules();
        let mut s = State::default();
        let media = crate::model::Media {
            width: 64,
            height: 48,
            fps_num: 10,
            fps_den: 1,
            duration_ns: 2_000 * 100_000_000,
            frame_pts: (0..2_000).map(|i| i * 100_000_000).collect(),
            keyframes: vec![0],
            ..Default::default()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            let (_, _, ch) = s.submit(crate::scheduler::tests::new_job("j1", ""), 0, &rules);
            store.persist(&s, &ch).unwrap();
            let (g, ch) = s.lease("w", "probe".into(), 0, &rules).unwrap();
            store.persist(&s, &ch).unwrap();
            let (ok, ch) = s.complete(
                "probe",
                g.epoch,
                Completion::Probe(media.clone()),
                1,
                &rules,
            );
            assert!(ok);
            assert_eq!(ch.media, vec!["j1".to_string()]);
            let written = rows(&s, &ch).unwrap();
            assert_eq!(written.media.len(), 1);
            // The job record (rewritten on every job change) stays small.
            let (_, job) = &written.jobs[0];
            assert!(job.len() < 2_000, "job record of {} bytes", job.len());
            store.persist(&s, &ch).unwrap();
            // A later change to the job rewrites its record only.
            let (_, ch) = s.lease("w", "seg".into(), 2, &rules).unwrap();
            assert!(rows(&s, &ch).unwrap().media.is_empty());
            store.persist(&s, &ch).unwrap();
        }
        let jobs = assert_reloads(dir.path(), &s);
        assert_eq!(jobs[0].media.as_ref(), Some(&media));
    }

    #[test]
    fn a_job_stored_with_its_probe_result_inline_keeps_it() {
        // How session 5 and earlier stored a probed job: the media inside the job record.
        let dir = tempfile::tempdir().unwrap();
        let rules = crate::scheduler::tests::rules();
        let s = crate::scheduler::tests::planned_job(&rules, 30);
        let job = s.jobs.values().next().unwrap().clone();
        let mut old = serde_json::to_value(&job).unwrap();
        old["media"] = serde_json::to_value(job.media.as_ref().unwrap()).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .jobs
                .insert(job.id.as_bytes(), serde_json::to_vec(&old).unwrap())
                .unwrap();
            let (jobs, _) = store.load().unwrap();
            assert_eq!(jobs, vec![job.clone()]);
            // Copied to the media tree, so the job's next (media-less) write loses nothing.
            store
                .jobs
                .insert(job.id.as_bytes(), encode(&job).unwrap())
                .unwrap();
            store.flush().unwrap();
        }
        let (jobs, _) = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(jobs, vec![job]);
    }

    #[test]
    fn a_store_in_use_is_refused_after_the_lock_wait() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::open(dir.path()).unwrap();
        let t = std::time::Instant::now();
        let e = Store::open(dir.path()).err().expect("refused");
        assert!(t.elapsed() >= LOCK_WAIT, "waited for the lock first");
        assert!(e.to_string().contains("could not acquire lock"), "{e}");
    }

    #[test]
    fn workers_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_worker("w1", &("host-a".to_string(), 4u32))
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let w: Vec<(String, (String, u32))> = store.load_workers().unwrap();
        assert_eq!(w, vec![("w1".to_string(), ("host-a".to_string(), 4))]);
    }
}
