//! Deletes what the scheduler no longer needs (fenced attempts' chunks, a finished job's work
//! prefix) on its own thread, so a slow or unreachable storage service never holds up the
//! JobManager. A failed delete only leaves garbage behind; it is logged, never fatal.

use framewise_common::storage::Store;
use tracing::warn;

enum Chore {
    Object(String),
    Prefix(String),
}

/// The handle the JobManager sends deletions to.
#[derive(Clone)]
pub struct Janitor {
    tx: std::sync::mpsc::Sender<Chore>,
}

impl Janitor {
    /// Starts the janitor thread (with its own small async runtime for the storage client).
    pub fn spawn(blobs: Store) -> std::io::Result<Janitor> {
        let (tx, rx) = std::sync::mpsc::channel::<Chore>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("fw-janitor".into())
            .spawn(move || {
                for chore in rx {
                    let r = match &chore {
                        Chore::Object(url) => rt.block_on(blobs.delete(url)).map(|_| ()),
                        Chore::Prefix(url) => rt.block_on(blobs.delete_prefix(url)).map(|_| ()),
                    };
                    if let Err(e) = r {
                        let url = match &chore {
                            Chore::Object(u) | Chore::Prefix(u) => u,
                        };
                        warn!(%url, error = %e, "could not delete unused work output");
                    }
                }
            })?;
        Ok(Janitor { tx })
    }

    /// Deletes one object (a fenced or lost attempt's chunk).
    pub fn delete(&self, url: &str) {
        let _ = self.tx.send(Chore::Object(url.to_string()));
    }

    /// Deletes everything under a prefix (a finished job's work).
    pub fn delete_prefix(&self, url: &str) {
        let _ = self.tx.send(Chore::Prefix(url.to_string()));
    }
}
