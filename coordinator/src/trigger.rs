//! The blob trigger (BlobWatcher): drop a video under `coordinator.trigger.input_prefix` and
//! a job stylizes it to the same name under `output_prefix`, with no other step. It lists the
//! prefix every `poll_ms` on its own thread. A blob is submitted once it has been listed
//! unchanged (same ETag) on two polls in a row, so an upload still in progress is left alone
//! (Azure lists only committed blobs anyway; a local file may still be growing). The submit's
//! idempotency key is the blob's URL + ETag, which the job store keeps: a coordinator restart
//! never submits the same version twice, and a new version of the blob is a new job. Names
//! without a video extension are recorded as rejected (shown at /api/v1/trigger).

use crate::convert::params_from;
use crate::manager::{self, now_ms, CoordError, JobManager};
use actix::Addr;
use framewise_common::config::TriggerConfig;
use framewise_common::proto as pb;
use framewise_common::storage::{Entry, Store};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// What the trigger has done, for the dashboard and the API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TriggerStatus {
    pub enabled: bool,
    pub input_prefix: String,
    pub output_prefix: String,
    pub polls: u64,
    /// Wall-clock time of the last listing (ms since the epoch).
    pub last_poll_ms: u64,
    /// Why the last listing or submit failed ("" = it did not).
    pub last_error: String,
    /// The latest submissions, newest last (at most 100): blob URL and job id.
    pub submitted: VecDeque<(String, String)>,
    /// Blobs that will not be submitted, with the reason.
    pub rejected: BTreeMap<String, String>,
}

/// What one poll decided for one blob.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Submit {
        input_url: String,
        output_url: String,
        key: String,
    },
    Reject {
        url: String,
        reason: String,
    },
}

/// The output URL of an input: its name relative to the input prefix, under the output
/// prefix, as `.mp4` (the only container framewise writes).
pub fn output_for(cfg: &TriggerConfig, input_url: &str) -> Option<String> {
    let rel = input_url.strip_prefix(&cfg.input_prefix)?;
    let rel = rel.trim_start_matches('/');
    let stem = match rel.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() && !stem.ends_with('/') => stem,
        _ => rel,
    };
    Some(framewise_common::storage::join(
        &cfg.output_prefix,
        &format!("{stem}.mp4"),
    ))
}

/// Decides, for one listing, what to submit and what to reject. `prev` is the previous
/// listing's ETag per URL (a blob is submitted only when unchanged since then); `done` holds
/// the keys already submitted by this process.
pub fn plan(
    cfg: &TriggerConfig,
    entries: &[Entry],
    prev: &HashMap<String, String>,
    done: &std::collections::HashSet<String>,
) -> Vec<Action> {
    let mut out = Vec::new();
    for e in entries {
        // Outputs written under the input prefix are never inputs.
        if !cfg.output_prefix.is_empty() && e.url.starts_with(&cfg.output_prefix) {
            continue;
        }
        let name = e.url.rsplit('/').next().unwrap_or(&e.url);
        if name.starts_with('.') {
            continue; // hidden: partial files and the like
        }
        let ext = name
            .rsplit_once('.')
            .map(|(_, x)| x.to_ascii_lowercase())
            .unwrap_or_default();
        if !cfg.extensions.iter().any(|x| x.eq_ignore_ascii_case(&ext)) {
            out.push(Action::Reject {
                url: e.url.clone(),
                reason: format!(
                    "not a video name (extensions accepted: {}; coordinator.trigger.extensions)",
                    cfg.extensions.join(", ")
                ),
            });
            continue;
        }
        if e.size == 0 {
            out.push(Action::Reject {
                url: e.url.clone(),
                reason: "empty (0 bytes)".into(),
            });
            continue;
        }
        let key = format!("trigger:{}#{}", e.url, e.etag);
        if done.contains(&key) || prev.get(&e.url) != Some(&e.etag) {
            continue;
        }
        let Some(output_url) = output_for(cfg, &e.url) else {
            continue;
        };
        out.push(Action::Submit {
            input_url: e.url.clone(),
            output_url,
            key,
        });
    }
    out
}

/// A running trigger; dropping it stops the polling thread after its current poll.
pub struct Trigger {
    pub status: Arc<Mutex<TriggerStatus>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The part of the coordinator a trigger submits through.
pub struct Submitter {
    pub manager: Addr<JobManager>,
    pub blobs: Store,
    pub max_input_bytes: u64,
}

impl Trigger {
    /// The status a trigger for `cfg` will keep (shared with the dashboard before it starts).
    pub fn new_status(cfg: &TriggerConfig) -> Arc<Mutex<TriggerStatus>> {
        Arc::new(Mutex::new(TriggerStatus {
            enabled: cfg.enabled,
            input_prefix: cfg.input_prefix.clone(),
            output_prefix: cfg.output_prefix.clone(),
            ..Default::default()
        }))
    }

    /// Starts polling `cfg.input_prefix` (canonical URLs: see `server::start`).
    pub fn spawn(
        cfg: TriggerConfig,
        sub: Submitter,
        status: Arc<Mutex<TriggerStatus>>,
    ) -> std::io::Result<Trigger> {
        let stop = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (st, stop2) = (status.clone(), stop.clone());
        std::thread::Builder::new()
            .name("fw-trigger".into())
            .spawn(move || {
                let mut prev = HashMap::new();
                let mut done = std::collections::HashSet::new();
                while !stop2.load(Ordering::Relaxed) {
                    rt.block_on(poll(&cfg, &sub, &st, &mut prev, &mut done));
                    std::thread::sleep(Duration::from_millis(cfg.poll_ms));
                }
            })?;
        info!(input = %status.lock().map(|s| s.input_prefix.clone()).unwrap_or_default(), "blob trigger watching");
        Ok(Trigger { status, stop })
    }
}

async fn poll(
    cfg: &TriggerConfig,
    sub: &Submitter,
    status: &Mutex<TriggerStatus>,
    prev: &mut HashMap<String, String>,
    done: &mut std::collections::HashSet<String>,
) {
    let entries = match sub.blobs.list(&cfg.input_prefix).await {
        Ok(e) => e,
        Err(e) => {
            warn!(prefix = %cfg.input_prefix, error = %e, "blob trigger: listing failed; retrying next poll");
            if let Ok(mut s) = status.lock() {
                s.polls += 1;
                s.last_poll_ms = now_ms();
                s.last_error = format!("listing {}: {e}", cfg.input_prefix);
            }
            return;
        }
    };
    let actions = plan(cfg, &entries, prev, done);
    *prev = entries.into_iter().map(|e| (e.url, e.etag)).collect();
    let mut last_error = String::new();
    for a in actions {
        match a {
            Action::Reject { url, reason } => {
                if let Ok(mut s) = status.lock() {
                    if s.rejected.insert(url.clone(), reason.clone()).is_none() {
                        warn!(%url, %reason, "blob trigger: rejected");
                    }
                }
            }
            Action::Submit {
                input_url,
                output_url,
                key,
            } => match submit(cfg, sub, &input_url, &output_url, &key).await {
                Ok((job_id, existing)) => {
                    done.insert(key);
                    if !existing {
                        info!(job_id = %job_id, input = %input_url, output = %output_url, "blob trigger: job submitted");
                    }
                    if let Ok(mut s) = status.lock() {
                        if !s.submitted.iter().any(|(_, j)| *j == job_id) {
                            s.submitted.push_back((input_url, job_id));
                            while s.submitted.len() > 100 {
                                s.submitted.pop_front();
                            }
                        }
                    }
                }
                // A refused spec will be refused again: record it and move on.
                Err(SubmitError::Refused(why)) => {
                    done.insert(key);
                    if let Ok(mut s) = status.lock() {
                        s.rejected.insert(input_url.clone(), why.clone());
                    }
                    warn!(input = %input_url, %why, "blob trigger: rejected");
                }
                // Queue full or coordinator busy: the blob stays unsubmitted and is tried again.
                Err(SubmitError::Later(why)) => {
                    warn!(input = %input_url, %why, "blob trigger: not submitted yet; retrying next poll");
                    last_error = format!("{input_url}: {why}");
                }
            },
        }
    }
    if let Ok(mut s) = status.lock() {
        s.polls += 1;
        s.last_poll_ms = now_ms();
        s.last_error = last_error;
    }
}

enum SubmitError {
    Refused(String),
    Later(String),
}

async fn submit(
    cfg: &TriggerConfig,
    sub: &Submitter,
    input_url: &str,
    output_url: &str,
    key: &str,
) -> Result<(String, bool), SubmitError> {
    let mut spec = pb::JobSpec {
        input_url: input_url.to_string(),
        output_url: output_url.to_string(),
        params: Some(pb::JobParams {
            style_weights: cfg.style_weights.clone(),
            ..Default::default()
        }),
    };
    crate::grpc::validate_spec(&mut spec, &sub.blobs, sub.max_input_bytes)
        .map_err(SubmitError::Refused)?;
    sub.blobs
        .ensure_container(&spec.output_url)
        .await
        .map_err(|e| SubmitError::Later(e.to_string()))?;
    if let Ok(Some(n)) = sub.blobs.size(&spec.input_url).await {
        crate::grpc::check_size(&spec.input_url, n, sub.max_input_bytes)
            .map_err(SubmitError::Refused)?;
    }
    let r = manager::ask(
        &sub.manager,
        manager::Submit {
            input_url: spec.input_url,
            output_url: spec.output_url,
            params: params_from(spec.params),
            idempotency_key: key.to_string(),
            // Triggered jobs belong to no submitter: admins and viewers see them.
            owner: String::new(),
        },
    )
    .await
    .map_err(|e| SubmitError::Later(format!("coordinator busy: {e}")))?;
    match r {
        Ok(v) => Ok(v),
        Err(CoordError::Invalid(w)) => Err(SubmitError::Refused(w)),
        Err(e) => Err(SubmitError::Later(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TriggerConfig {
        TriggerConfig {
            enabled: true,
            input_prefix: "az://acct/media/in/".into(),
            output_prefix: "az://acct/media/out/".into(),
            ..Default::default()
        }
    }

    fn entry(name: &str, etag: &str, size: u64) -> Entry {
        Entry {
            url: format!("az://acct/media/{name}"),
            name: name.into(),
            etag: etag.into(),
            size,
            content_type: String::new(),
        }
    }

    #[test]
    fn a_blob_is_submitted_once_it_stops_changing() {
        let c = cfg();
        let done = Default::default();
        let e1 = [entry("in/a.mov", "1", 10)];
        // First sighting: wait one poll.
        assert!(plan(&c, &e1, &HashMap::new(), &done).is_empty());
        let prev: HashMap<_, _> = [(e1[0].url.clone(), "1".to_string())].into();
        let a = plan(&c, &e1, &prev, &done);
        assert_eq!(
            a,
            vec![Action::Submit {
                input_url: "az://acct/media/in/a.mov".into(),
                output_url: "az://acct/media/out/a.mp4".into(),
                key: "trigger:az://acct/media/in/a.mov#1".into(),
            }]
        );
        // Rewritten since: a new ETag waits another poll, then is a new job (new key).
        let e2 = [entry("in/a.mov", "2", 10)];
        assert!(plan(&c, &e2, &prev, &done).is_empty());
        let done: std::collections::HashSet<String> =
            ["trigger:az://acct/media/in/a.mov#1".to_string()].into();
        assert!(plan(&c, &e1, &prev, &done).is_empty(), "already submitted");
    }

    #[test]
    fn non_videos_empties_and_outputs_are_not_submitted() {
        let c = cfg();
        let es = [
            entry("in/notes.txt", "1", 10),
            entry("in/empty.mp4", "1", 0),
            entry("in/.x.mp4.partial", "1", 10),
        ];
        let prev = es.iter().map(|e| (e.url.clone(), e.etag.clone())).collect();
        let a = plan(&c, &es, &prev, &Default::default());
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(matches!(&a[0], Action::Reject { reason, .. } if reason.contains("not a video")));
        assert!(matches!(&a[1], Action::Reject { reason, .. } if reason.contains("empty")));
        let inside = TriggerConfig {
            output_prefix: "az://acct/media/in/done/".into(),
            ..cfg()
        };
        let o = [entry("in/done/a.mp4", "1", 10)];
        let prev = o.iter().map(|e| (e.url.clone(), e.etag.clone())).collect();
        assert!(plan(&inside, &o, &prev, &Default::default()).is_empty());
    }

    #[test]
    fn outputs_keep_the_relative_name() {
        let c = cfg();
        assert_eq!(
            output_for(&c, "az://acct/media/in/sub/clip.v2.mkv").as_deref(),
            Some("az://acct/media/out/sub/clip.v2.mp4")
        );
        assert_eq!(output_for(&c, "az://other/x.mp4"), None);
    }
}
