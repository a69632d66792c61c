//! The `azure-vmss` backend: workers are the instances of an Azure VM scale set (Spot VMs
//! running `framewise worker`, deploy/). Scaling up sets the scale set's capacity; scaling down
//! deletes the drained instances by id (the VM gets a Terminate scheduled event, its worker
//! releases what it holds and exits). Everything goes through Azure Resource Manager's REST
//! API with a token from the VM's managed identity or from a service principal in the
//! environment (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET; never logged).

use super::{Exit, PoolWorker, ScaleBackend};
use framewise_common::config::AzureScaleSetConfig;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The ARM resource every token is asked for.
const ARM_RESOURCE: &str = "https://management.azure.com/";

/// A scale set driven through ARM.
pub struct Vmss {
    cfg: AzureScaleSetConfig,
    agent: ureq::Agent,
    token: Option<(String, Instant)>,
    /// Capacity as ARM last reported it (or as we last set it).
    capacity: usize,
    /// Instances by id: their name and when we first saw them.
    instances: HashMap<String, (String, u64)>,
    /// Instance ids being deleted because the autoscaler drained them.
    draining: HashMap<String, u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The scale-set instance id in a worker id: VM names are `<scale set>_<instance id>` and a
/// worker's pipelines register as `<vm name>-N`.
pub fn instance_id(scale_set: &str, worker_id: &str) -> Option<String> {
    let rest = worker_id.strip_prefix(scale_set)?.strip_prefix('_')?;
    let id: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    (!id.is_empty()).then_some(id)
}

impl Vmss {
    pub fn new(cfg: AzureScaleSetConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            cfg,
            agent,
            token: None,
            capacity: 0,
            instances: HashMap::new(),
            draining: HashMap::new(),
        }
    }

    fn scale_set_url(&self, suffix: &str) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}{suffix}?api-version={}",
            self.cfg.arm_endpoint.trim_end_matches('/'),
            self.cfg.subscription_id,
            self.cfg.resource_group,
            self.cfg.scale_set,
            self.cfg.api_version
        )
    }

    /// A bearer token for ARM, cached until five minutes before it expires.
    fn token(&mut self) -> Result<String, String> {
        if let Some((t, until)) = &self.token {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (mut resp, source) = match (
            env("AZURE_TENANT_ID"),
            env("AZURE_CLIENT_ID"),
            env("AZURE_CLIENT_SECRET"),
        ) {
            (Some(tenant), Some(client), Some(secret)) => {
                let url = format!(
                    "{}/{tenant}/oauth2/v2.0/token",
                    self.cfg.authority.trim_end_matches('/')
                );
                let scope = format!("{ARM_RESOURCE}.default");
                let r = self
                    .agent
                    .post(&url)
                    .send_form([
                        ("grant_type", "client_credentials"),
                        ("client_id", client.as_str()),
                        ("client_secret", secret.as_str()),
                        ("scope", scope.as_str()),
                    ])
                    .map_err(|e| format!("service principal token from {url}: {e}"))?;
                (r, "service principal")
            }
            _ => {
                let url = format!(
                    "{}?api-version=2018-02-01&resource={ARM_RESOURCE}",
                    self.cfg.imds_token_url
                );
                let r = self
                    .agent
                    .get(&url)
                    .header("Metadata", "true")
                    .call()
                    .map_err(|e| format!("managed identity token from {url}: {e}"))?;
                (r, "managed identity")
            }
        };
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            return Err(format!(
                "{source} token: HTTP {status}: {}",
                first_line(&body)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{source} token: not JSON: {e}"))?;
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| format!("{source} token: no access_token in the answer"))?
            .to_string();
        // IMDS sends expires_in as a string, Entra ID as a number.
        let secs = v["expires_in"]
            .as_u64()
            .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(3600);
        let until = Instant::now() + Duration::from_secs(secs.saturating_sub(300).max(30));
        self.token = Some((token.clone(), until));
        Ok(token)
    }

    /// One ARM call; the answer's JSON (Null for an empty body). Errors name the scale set.
    fn arm(
        &mut self,
        method: &str,
        suffix: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let token = self.token()?;
        let url = self.scale_set_url(suffix);
        let auth = format!("Bearer {token}");
        let send = |req: ureq::RequestBuilder<ureq::typestate::WithBody>, b: serde_json::Value| {
            req.header("Authorization", &auth)
                .content_type("application/json")
                .send(b.to_string())
        };
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("PATCH", Some(b)) => send(self.agent.patch(&url), b),
            ("POST", Some(b)) => send(self.agent.post(&url), b),
            (m, _) => return Err(format!("unsupported ARM call {m}")),
        };
        let what = format!(
            "scale set {}/{} ({method} {suffix})",
            self.cfg.resource_group, self.cfg.scale_set
        );
        let mut resp = sent.map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status == 401 {
            self.token = None; // expired or revoked: fetch a new one next time
        }
        if !(200..300).contains(&status) {
            return Err(format!("{what}: HTTP {status}: {}", first_line(&text)));
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("{what}: answer is not JSON: {e}"))
    }
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    &l[..l.len().min(300)]
}

impl ScaleBackend for Vmss {
    fn name(&self) -> &'static str {
        "azure-vmss"
    }

    fn current(&self) -> usize {
        self.capacity.saturating_sub(self.draining.len())
    }

    fn scale_to(&mut self, n: usize) -> Result<usize, String> {
        let live = self.current();
        if n <= live {
            return Ok(0);
        }
        let capacity = self.capacity + (n - live);
        self.arm(
            "PATCH",
            "",
            Some(serde_json::json!({ "sku": { "capacity": capacity } })),
        )?;
        info!(scale_set = %self.cfg.scale_set, from = self.capacity, to = capacity, "scale set capacity raised");
        self.capacity = capacity;
        Ok(n - live)
    }

    fn drain(&mut self, worker_id: &str) -> Result<(), String> {
        let id = instance_id(&self.cfg.scale_set, worker_id).ok_or_else(|| {
            format!(
                "worker {worker_id:?} is not an instance of scale set {:?} (ids look like {}_<instance>)",
                self.cfg.scale_set, self.cfg.scale_set
            )
        })?;
        if self.draining.contains_key(&id) {
            return Ok(());
        }
        self.arm(
            "POST",
            "/delete",
            Some(serde_json::json!({ "instanceIds": [id] })),
        )?;
        info!(scale_set = %self.cfg.scale_set, instance = %id, worker_id, "scale set instance deleted (drained)");
        self.draining.insert(id, now_ms());
        Ok(())
    }

    fn refresh(&mut self) -> Vec<Exit> {
        let listed = match self.arm("GET", "/virtualMachines", None) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "cannot list the scale set's instances");
                return Vec::new();
            }
        };
        let mut now: HashMap<String, String> = HashMap::new();
        for vm in listed["value"].as_array().into_iter().flatten() {
            if let (Some(id), Some(name)) = (vm["instanceId"].as_str(), vm["name"].as_str()) {
                now.insert(id.to_string(), name.to_string());
            }
        }
        let t = now_ms();
        let mut exits = Vec::new();
        self.instances.retain(|id, (name, since)| {
            if now.contains_key(id) {
                return true;
            }
            exits.push(Exit {
                id: name.clone(),
                pid: None,
                how: "instance gone from the scale set".into(),
                drained: false,
                ran_ms: t.saturating_sub(*since),
            });
            false
        });
        for e in exits.iter_mut() {
            if let Some(id) = instance_id(&self.cfg.scale_set, &e.id) {
                if self.draining.remove(&id).is_some() {
                    e.drained = true;
                    e.how = "deleted after draining".into();
                } else {
                    e.how = "evicted or deleted outside the autoscaler".into();
                }
            }
        }
        for (id, name) in now {
            self.instances.entry(id).or_insert((name, t));
        }
        // ARM's count is the truth: Spot evictions with policy Delete lower it by themselves.
        self.capacity = self.instances.len();
        self.draining
            .retain(|id, _| self.instances.contains_key(id));
        exits
    }

    fn workers(&self) -> Vec<PoolWorker> {
        let mut v: Vec<PoolWorker> = self
            .instances
            .iter()
            .map(|(id, (name, since))| PoolWorker {
                id: name.clone(),
                pid: None,
                state: if self.draining.contains_key(id) {
                    "draining"
                } else {
                    "running"
                },
                started_ms: *since,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// One request as the fake ARM saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path_and_query: String,
        headers: HashMap<String, String>,
        body: String,
    }

    /// A local HTTP server answering a fixed script of (status, body) and recording every
    /// request: the only simulated part (there is no Azure here).
    fn fake_arm(script: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (status, answer) in script {
                let Ok((mut s, _)) = l.accept() else { return };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path_and_query = parts.next().unwrap_or("").to_string();
                let mut headers = HashMap::new();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                log.lock().unwrap().push(Seen {
                    method,
                    path_and_query,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        (url, seen)
    }

    fn cfg(url: &str) -> AzureScaleSetConfig {
        AzureScaleSetConfig {
            arm_endpoint: url.into(),
            subscription_id: "sub-1".into(),
            resource_group: "rg-fw".into(),
            scale_set: "fw-workers".into(),
            api_version: "2024-07-01".into(),
            imds_token_url: format!("{url}/metadata/identity/oauth2/token"),
            authority: url.into(),
        }
    }

    const BASE: &str = "/subscriptions/sub-1/resourceGroups/rg-fw/providers/Microsoft.Compute/virtualMachineScaleSets/fw-workers";

    #[test]
    fn ids_map_to_instances() {
        assert_eq!(instance_id("fw", "fw_12"), Some("12".into()));
        assert_eq!(instance_id("fw", "fw_12-3"), Some("12".into()));
        assert_eq!(instance_id("fw", "other_12"), None);
        assert_eq!(instance_id("fw", "fw_"), None);
    }

    #[test]
    fn scaling_sends_exactly_the_arm_requests() {
        let (url, seen) = fake_arm(vec![
            (200, r#"{"access_token":"tok-1","expires_in":"3600"}"#),
            (200, r#"{"value":[]}"#),
            (200, r#"{"sku":{"capacity":2}}"#),
            (
                200,
                r#"{"value":[{"instanceId":"0","name":"fw-workers_0"},{"instanceId":"3","name":"fw-workers_3"}]}"#,
            ),
            (202, ""),
            (
                200,
                r#"{"value":[{"instanceId":"0","name":"fw-workers_0"}]}"#,
            ),
            (200, r#"{"value":[]}"#),
        ]);
        // A managed identity, as on the coordinator VM (no service principal in the env).
        for k in ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"] {
            assert!(std::env::var(k).is_err(), "{k} set in the test environment");
        }
        let mut b = Vmss::new(cfg(&url));
        assert!(b.refresh().is_empty());
        assert_eq!(b.current(), 0);
        assert_eq!(b.scale_to(2).unwrap(), 2);
        assert_eq!(b.current(), 2);
        assert!(b.refresh().is_empty());
        assert_eq!(b.workers().len(), 2);
        // Drain the worker of instance 3 (one of its pipelines' ids): that instance is deleted.
        b.drain("fw-workers_3-1").unwrap();
        assert_eq!(b.current(), 1);
        assert!(b
            .drain("someone-else")
            .unwrap_err()
            .contains("not an instance of scale set"));
        let exits = b.refresh();
        assert_eq!(exits.len(), 1);
        assert!(exits[0].drained, "{exits:?}");
        // Instance 0 evicted (Spot, eviction policy Delete): reported as died, to be replaced.
        let exits = b.refresh();
        assert_eq!(exits.len(), 1);
        assert!(
            !exits[0].drained && exits[0].how.contains("evicted"),
            "{exits:?}"
        );
        assert_eq!(b.current(), 0);

        let seen = seen.lock().unwrap().clone();
        let calls: Vec<(String, String)> = seen
            .iter()
            .map(|s| (s.method.clone(), s.path_and_query.clone()))
            .collect();
        let q = "?api-version=2024-07-01";
        assert_eq!(
            calls,
            vec![
                ("GET".into(), "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/".into()),
                ("GET".into(), format!("{BASE}/virtualMachines{q}")),
                ("PATCH".into(), format!("{BASE}{q}")),
                ("GET".into(), format!("{BASE}/virtualMachines{q}")),
                ("POST".into(), format!("{BASE}/delete{q}")),
                ("GET".into(), format!("{BASE}/virtualMachines{q}")),
                ("GET".into(), format!("{BASE}/virtualMachines{q}")),
            ]
        );
        assert_eq!(
            seen[0].headers.get("metadata").map(String::as_str),
            Some("true")
        );
        for s in &seen[1..] {
            assert_eq!(
                s.headers.get("authorization").map(String::as_str),
                Some("Bearer tok-1"),
                "{} {}: the cached token",
                s.method,
                s.path_and_query
            );
        }
        let body = |i: usize| serde_json::from_str::<serde_json::Value>(&seen[i].body).unwrap();
        assert_eq!(body(2), serde_json::json!({"sku": {"capacity": 2}}));
        assert_eq!(body(4), serde_json::json!({"instanceIds": ["3"]}));
    }

    #[test]
    fn arm_errors_name_the_scale_set_and_the_status() {
        let (url, _) = fake_arm(vec![
            (200, r#"{"access_token":"t","expires_in":"3600"}"#),
            (403, r#"{"error":{"code":"AuthorizationFailed"}}"#),
        ]);
        let mut b = Vmss::new(cfg(&url));
        let e = b.scale_to(1).unwrap_err();
        assert!(
            e.contains("rg-fw/fw-workers")
                && e.contains("HTTP 403")
                && e.contains("AuthorizationFailed"),
            "{e}"
        );
        assert_eq!(b.current(), 0, "nothing counted as started");
    }
}
