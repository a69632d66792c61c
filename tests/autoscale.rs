//! The autoscaler with its `local` backend, as real processes: a coordinator that starts with no
//! worker starts `framewise worker` processes when a job arrives, replaces one that is
//! SIGKILLed mid-job, finishes the job with every frame, and stops its workers once the
//! queue has been empty for the cooldown, saying why at every step.

mod common;
use common::cluster::*;
use common::*;
use framewise_common::proto::JobState;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn get_json(url: &str) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent.get(url).call().ok()?;
    if resp.status().as_u16() != 200 {
        return None;
    }
    serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
}

/// Polls `url` until `pred` holds (generous: the CI machine has 2 cores shared by two tests).
fn wait_json(url: &str, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    let mut last = Value::Null;
    loop {
        if let Some(v) = get_json(url) {
            if pred(&v) {
                return v;
            }
            last = v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}; last answer: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The pids of the autoscaler's workers, by id.
fn pids(a: &Value) -> Vec<(String, u64)> {
    a["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| (w["id"].as_str().unwrap_or("").to_string(), num(&w["pid"])))
                .collect()
        })
        .unwrap_or_default()
}

fn trace(a: &Value) -> String {
    let mut s = String::new();
    let t0 = a["decisions"][0]["at_ms"].as_u64().unwrap_or(0);
    for d in a["decisions"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "+{:>5.1} s  {:<4} current {} desired {}  {}\n",
            (num(&d["at_ms"]).saturating_sub(t0)) as f64 / 1000.0,
            d["direction"].as_str().unwrap_or(""),
            d["current"],
            d["desired"],
            d["reason"].as_str().unwrap_or("")
        ));
        if let Some(last) = d["last_reason"].as_str() {
            s.push_str(&format!(
                "          ... x{} until +{:.1} s: {last}\n",
                d["looks"],
                (num(&d["last_ms"]).saturating_sub(t0)) as f64 / 1000.0
            ));
        }
    }
    s
}

/// A worker config like the shipped one, with the synthetic model (150 ms a frame), so a
/// 300-frame job lasts long enough to watch the pool grow, lose a worker and shrink.
fn slow_worker_config(dir: &Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(repo().join("config/worker.toml")).unwrap();
    let text = shipped
        .replace(
            "synthetic_model_ms_per_frame = 0",
            "synthetic_model_ms_per_frame = 150",
        )
        .replace("intra_threads = 0", "intra_threads = 1");
    assert!(
        text.contains("synthetic_model_ms_per_frame = 150") && text.contains("intra_threads = 1")
    );
    let p = dir.join("worker.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn autoscaler_starts_replaces_and_stops_local_workers() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.mp4");
    let out = d.path().join("out.mp4");
    make_clip(&input, 96, 64, 300, true);
    let cl = Cluster::new(d.path());
    let worker_config = slow_worker_config(d.path());
    let mut cfg = std::fs::read_to_string(&cl.config).unwrap();
    cfg.push_str(&format!(
        "\n[coordinator.autoscaler]\nenabled = true\nbackend = \"local\"\nmin_workers = 0\nmax_workers = 3\n\
         target_seconds = 1.0\nidle_cooldown_ms = 3000\ninterval_ms = 500\nworker_config = \"{}\"\n\
         framewise_bin = \"\"\nper_worker_fps_estimate = 10.0\n",
        worker_config.display()
    ));
    std::fs::write(&cl.config, cfg).unwrap();
    let mut procs = Procs(vec![cl.coordinator(0)]);
    let api = format!("{}/api/v1/autoscaler", cl.http_url());

    // Nothing queued: no worker.
    let a = wait_json(&api, 60, "the first decision", |a| {
        a["decisions"].as_array().is_some_and(|d| !d.is_empty())
    });
    assert_eq!(a["enabled"], true);
    assert_eq!(a["config"]["max_workers"], 3);
    assert_eq!((num(&a["current"]), num(&a["desired"])), (0, 0), "{a:#}");
    assert!(pids(&a).is_empty(), "{a:#}");

    // A job arrives: workers are started (one for the probe, then as many as the queue needs).
    let (submitter, id) = submit(&cl, &input, &out);
    procs.0.push(submitter);
    let submitter = procs.0.len() - 1;
    // 300 frames at the estimated 10 frames/s per worker, target 1 s: 30 workers, max 3.
    wait_json(&api, 180, "3 workers to be started", |a| {
        num(&a["current"]) == 3
    });

    // SIGKILL an autoscaled worker while it holds a segment lease.
    let holder = |j: &framewise_common::proto::Job| {
        j.tasks
            .iter()
            .find(|t| {
                t.kind == "segment" && t.state == "leased" && t.worker_id.starts_with("auto-")
            })
            .map(|t| t.worker_id.clone())
    };
    let j = wait_for(
        &cl.url(),
        &id,
        180,
        "an autoscaled worker to hold a segment",
        |j| holder(j).is_some(),
    );
    let victim = holder(&j).unwrap();
    let before = get_json(&api).expect("the autoscaler answers");
    let (_, pid) = pids(&before)
        .into_iter()
        .find(|(w, _)| *w == victim)
        .unwrap_or_else(|| panic!("{victim} is not in the autoscaler's workers: {before:#}"));
    assert!(pid > 0);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(killed, "kill -KILL {pid}");
    eprintln!("SIGKILLed {victim} (pid {pid}) holding a segment");

    // The autoscaler notices and starts a replacement (the queue still needs it).
    let a = wait_json(&api, 120, "the killed worker to be replaced", |a| {
        num(&a["died_total"]) >= 1
            && num(&a["started_total"]) > num(&before["started_total"])
            && !pids(a).iter().any(|(_, p)| *p == pid)
    });
    assert!(
        a["decisions"].as_array().unwrap().iter().any(|d| {
            let r = d["reason"].as_str().unwrap_or("");
            r.contains(&format!("{victim} (pid {pid}) died (killed by signal 9)"))
                && d["direction"] == "up"
                && r.ends_with("starting 1")
        }),
        "the death is in the decisions:\n{}",
        trace(&a)
    );

    // The job finishes with every frame.
    let status = wait_exit(&mut procs.0[submitter], 300);
    assert!(
        status.success(),
        "submit --wait: {}",
        std::fs::read_to_string(d.path().join("submit.err")).unwrap_or_default()
    );
    let j = get_job(&cl.url(), &id).unwrap();
    assert_eq!(j.state, JobState::Succeeded as i32, "{j:?}");
    check_output(&input, &out);

    // Nothing queued for the cooldown: every worker is stopped (none held a lease any more).
    let mut seen: Vec<u64> = pids(&a).into_iter().map(|(_, p)| p).collect();
    let a = wait_json(&api, 120, "the workers to be stopped", |a| {
        num(&a["current"]) == 0 && pids(a).is_empty()
    });
    let t = trace(&a);
    eprintln!("autoscaler decisions:\n{t}");
    let decisions = a["decisions"].as_array().unwrap();
    let has = |dir: &str, text: &str| {
        decisions
            .iter()
            .any(|d| d["direction"] == dir && d["reason"].as_str().unwrap_or("").contains(text))
    };
    assert!(has("up", "starting"), "a scale-up with its reason:\n{t}");
    assert!(
        has("up", "frames/s per worker"),
        "scaled on the queue:\n{t}"
    );
    assert!(
        has("down", "stopping"),
        "a scale-down with its reason:\n{t}"
    );
    assert!(
        has("hold", "to stop after"),
        "the cooldown was waited:\n{t}"
    );
    assert_eq!(num(&a["desired"]), 0);
    seen.retain(|p| *p != pid);
    for p in seen {
        let gone = !Path::new(&format!("/proc/{p}")).exists()
            || std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s.contains(") Z "));
        assert!(gone, "worker pid {p} still runs");
    }
    // The autoscaled workers registered under their ids, and the metrics tell the story too.
    let workers = get_json(&format!("{}/api/v1/workers", cl.http_url())).unwrap();
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"].as_str().is_some_and(|i| i.starts_with("auto-"))),
        "{workers:#}"
    );
    let metrics = ureq::get(&format!("{}/metrics", cl.http_url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for line in [
        "framewise_autoscaler_current_workers 0",
        "framewise_autoscaler_desired_workers 0",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let downs = metrics
        .lines()
        .find(|l| l.starts_with("framewise_autoscaler_decisions_total{direction=\"down\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(downs >= 1.0, "{metrics}");
    // Stopped by Ctrl-C, the workers exited cleanly.
    let log = std::fs::read_to_string(d.path().join("coordinator-0.log")).unwrap();
    assert!(log.contains("autoscaled worker stopped"), "{log}");
    // The dashboard shows the autoscaler with its decisions, newest first, in a real browser.
    let mut b = common::browser::Browser::open(&format!("{}/", cl.http_url()));
    b.wait_until(
        "document.querySelector('#autoscaler tr[data-direction=\"down\"]')",
        30,
    );
    let text = b.eval("document.getElementById('autoscaler').textContent");
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.contains("Autoscaler") && text.contains("nothing queued"),
        "{text}"
    );
    let errors = b.eval("document.getElementById('js-errors').textContent");
    assert_eq!(
        errors.as_str().unwrap_or_default().trim(),
        "",
        "JavaScript errors"
    );
    drop(procs);
}

#[test]
fn a_missing_worker_config_fails_the_start_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cl = Cluster::new(d.path());
    let mut cfg = std::fs::read_to_string(&cl.config).unwrap();
    cfg.push_str(
        "\n[coordinator.autoscaler]\nenabled = true\nworker_config = \"/nope/worker.toml\"\n",
    );
    std::fs::write(&cl.config, cfg).unwrap();
    let o = framewise(&["coordinator", "-c", cl.config.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("coordinator.autoscaler.worker_config") && err.contains("/nope/worker.toml"),
        "{err}"
    );
}
