//! Eviction notices: polls an endpoint in the Azure Instance Metadata
//! Scheduled Events format and reports the first Preempt (spot eviction) or
//! Terminate (scale-in) notice that applies to this VM.

use serde::Deserialize;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The Scheduled Events document (only the fields framewise reads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Document {
    pub document_incarnation: u64,
    pub events: Vec<Event>,
}

/// One scheduled event.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub resources: Vec<String>,
    pub event_status: String,
    pub not_before: String,
}

/// The notice that means this VM is about to go away, if any.
pub fn eviction<'a>(doc: &'a Document, vm_name: &str) -> Option<&'a Event> {
    doc.events.iter().find(|e| {
        matches!(e.event_type.as_str(), "Preempt" | "Terminate")
            && (vm_name.is_empty()
                || e.resources.is_empty()
                || e.resources.iter().any(|r| r == vm_name))
    })
}

/// Polls `url` every `every` on its own thread until a notice applies, then sends its description.
pub fn watch_notices(
    url: String,
    every: Duration,
    vm_name: String,
    tx: watch::Sender<Option<String>>,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let spawned = std::thread::Builder::new().name("fw-evictions".into()).spawn(move || {
        info!(%url, "watching for eviction notices");
        let mut failing = false;
        while !tx.is_closed() {
            let body = agent
                .get(&url)
                .header("Metadata", "true")
                .call()
                .and_then(|mut r| r.body_mut().read_to_string());
            match body.map(|b| serde_json::from_str::<Document>(&b).map_err(|e| e.to_string())) {
                Ok(Ok(doc)) => {
                    failing = false;
                    if let Some(e) = eviction(&doc, &vm_name) {
                        let what = format!("eviction notice ({} {}, not before {})", e.event_type, e.event_id, e.not_before);
                        warn!(%url, notice = %what, "this VM is going away");
                        let _ = tx.send(Some(what));
                        return;
                    }
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    warn!(%url, error = %e, "eviction-notice endpoint sent an unreadable document");
                }
                Err(e) if !failing => {
                    failing = true;
                    warn!(%url, error = %e, "eviction-notice endpoint not reachable");
                }
                _ => {}
            }
            std::thread::sleep(every);
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "could not start the eviction watcher");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"DocumentIncarnation":2,"Events":[{"EventId":"C7061BAC-AFDC-4513-B24B-AA5F13A16123",
        "EventStatus":"Scheduled","EventType":"Preempt","ResourceType":"VirtualMachine",
        "Resources":["vmss_vm1"],"NotBefore":"Mon, 19 Sep 2016 18:29:47 GMT","Description":"",
        "EventSource":"Platform","DurationInSeconds":-1}]}"#;

    #[test]
    fn parses_azure_notices() {
        let doc: Document = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(doc.document_incarnation, 2);
        assert!(eviction(&doc, "").is_some());
        assert!(eviction(&doc, "vmss_vm1").is_some());
        assert!(eviction(&doc, "vmss_vm2").is_none(), "another VM's notice");
        let freeze: Document = serde_json::from_str(&SAMPLE.replace("Preempt", "Freeze")).unwrap();
        assert!(
            eviction(&freeze, "").is_none(),
            "a freeze is not an eviction"
        );
        let empty: Document =
            serde_json::from_str(r#"{"DocumentIncarnation":1,"Events":[]}"#).unwrap();
        assert!(eviction(&empty, "").is_none());
    }
}
