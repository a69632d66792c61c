//! sled persistence: trees `jobs` and `tasks` (JSON records with a version
//! field) and `meta` (schema version). Every change the scheduler reports is
//! written in one transaction and flushed before the caller replies.

use crate::model::{Job, Task, SCHEMA_VERSION};
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

/// The coordinator's durable state.
pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    tasks: sled::Tree,
    workers: sled::Tree,
}

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
        let db = sled::open(dir).map_err(|e| open_err(&e))?;
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
        Ok(Self {
            db,
            jobs,
            tasks,
            workers,
        })
    }

    /// Every stored job and task.
    pub fn load(&self) -> Result<(Vec<Job>, Vec<Task>), StoreError> {
        let mut jobs = Vec::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            jobs.push(decode(&k, &v)?);
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

    /// A handle for flushing (see `flush`); the JobManager awaits `flush_async` on it before replying.
    pub fn db(&self) -> sled::Db {
        self.db.clone()
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Writes the changed records of `state` in one transaction (not yet flushed: see `flush`).
    pub fn persist(&self, state: &State, ch: &Changes) -> Result<(), StoreError> {
        if ch.is_empty() {
            return Ok(());
        }
        let mut job_rows = Vec::new();
        for id in &ch.jobs {
            if let Some(j) = state.jobs.get(id) {
                job_rows.push((id.as_bytes().to_vec(), encode(j)?));
            }
        }
        let mut task_rows = Vec::new();
        for (j, i) in &ch.tasks {
            if let Some(t) = state.tasks.get(&(j.clone(), *i)) {
                task_rows.push((task_key(j, *i), encode(t)?));
            }
        }
        (&self.jobs, &self.tasks)
            .transaction(|(jt, tt)| {
                for (k, v) in &job_rows {
                    jt.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &task_rows {
                    tt.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| StoreError::Io(format!("{e:?}")))?;
        Ok(())
    }
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
        let store = Store::open(dir.path()).unwrap();
        let (jobs, tasks) = store.load().unwrap();
        assert_eq!(jobs, s.jobs.values().cloned().collect::<Vec<_>>());
        assert_eq!(tasks, s.tasks.values().cloned().collect::<Vec<_>>());
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
