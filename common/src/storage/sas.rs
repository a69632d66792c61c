//! What a worker does with the signed URLs of its lease: upload a file to one blob (blocks in
//! parallel, each checked by the service against its Content-MD5, retried with backoff) and
//! make it visible in one step (Put Block List). Workers hold no storage credential; they
//! read their inputs straight from signed URLs with ranged HTTP reads (GStreamer's
//! souphttpsrc). A signed URL is a secret until it expires: log `redact(url)` only.

use base64::Engine;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;

/// A transfer that failed, naming the blob (never the signature).
#[derive(Debug, Error)]
pub enum TransferError {
    #[error("{url}: refused with HTTP {status} {code}: {detail}")]
    Refused {
        url: String,
        status: u16,
        code: String,
        detail: String,
    },
    #[error("{url}: gave up after {tries} tries: {last}")]
    GaveUp {
        url: String,
        tries: u32,
        last: String,
    },
    #[error("{path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
}

impl TransferError {
    /// A refusal (expired or wrong signature, no permission) will not go away by retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(self, TransferError::Refused { .. })
    }
}

/// How a worker uploads (from `[storage]`).
#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub block_bytes: u64,
    pub parallel: usize,
    pub retries: u32,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions::from(&crate::config::WorkerConfig::default())
    }
}

impl From<&crate::config::WorkerConfig> for TransferOptions {
    fn from(c: &crate::config::WorkerConfig) -> Self {
        TransferOptions {
            block_bytes: c.upload_block_bytes,
            parallel: c.upload_parallel,
            retries: c.upload_retries.max(1),
        }
    }
}

/// Removes the query (the signature) of every URL in a message, so errors that quote a signed
/// URL can be logged and stored.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ')')
            .unwrap_or(tail.len());
        out.push_str(redact(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The URL without its query (the signature), safe to log or show.
pub fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .timeout_connect(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// `url` with one more query parameter block.
fn with_query(url: &str, extra: &str) -> String {
    if url.contains('?') {
        format!("{url}&{extra}")
    } else {
        format!("{url}?{extra}")
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One PUT, retried with exponential backoff on network errors, 408, 429 and 5xx.
fn put(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
    retries: u32,
) -> Result<(), TransferError> {
    let mut last = String::new();
    for attempt in 0..retries {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis((200u64 << attempt.min(5)).min(5_000)));
        }
        let mut req = agent.put(url);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        match req.send(body) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                if (200..300).contains(&status) {
                    return Ok(());
                }
                let code = resp
                    .headers()
                    .get("x-ms-error-code")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let detail = service_message(&resp.body_mut().read_to_string().unwrap_or_default());
                if status == 408 || status == 429 || status >= 500 {
                    last = format!("HTTP {status} {code}");
                    tracing::warn!(
                        url = redact(url),
                        status,
                        attempt,
                        "upload failed; retrying"
                    );
                    continue;
                }
                return Err(TransferError::Refused {
                    url: redact(url).to_string(),
                    status,
                    code,
                    detail,
                });
            }
            Err(e) => {
                last = e.to_string();
                tracing::warn!(url = redact(url), error = %e, attempt, "upload failed; retrying");
            }
        }
    }
    Err(TransferError::GaveUp {
        url: redact(url).to_string(),
        tries: retries,
        last,
    })
}

/// Uploads a file to the blob behind a write-signed URL. Small files go in one Put Blob;
/// larger ones as blocks uploaded `parallel` at a time and committed by one Put Block List,
/// so the blob appears whole or not at all. Returns the bytes uploaded.
pub fn upload_file(url: &str, path: &Path, opts: &TransferOptions) -> Result<u64, TransferError> {
    let local = |source| TransferError::Local {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(local)?;
    let size = f.metadata().map_err(local)?.len();
    let agent = agent();
    let content_type = if path.extension().is_some_and(|e| e == "mp4") {
        "video/mp4"
    } else {
        "text/plain; charset=utf-8"
    };
    if size <= opts.block_bytes {
        let mut body = Vec::with_capacity(size as usize);
        f.read_to_end(&mut body).map_err(local)?;
        let md5 = b64(&md5::compute(&body).0);
        put(
            &agent,
            url,
            &[
                ("x-ms-blob-type", "BlockBlob".into()),
                ("x-ms-blob-content-type", content_type.into()),
                ("Content-MD5", md5),
            ],
            &body,
            opts.retries,
        )?;
        return Ok(size);
    }
    let blocks = size.div_ceil(opts.block_bytes) as usize;
    let ids: Vec<String> = (0..blocks)
        .map(|i| b64(format!("{i:08}").as_bytes()))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<TransferError>> = Mutex::new(None);
    let whole = Mutex::new(md5::Context::new());
    // Blocks are read in order by whichever thread takes the next index, so the whole-file
    // digest is fed in order too.
    let file = Mutex::new(f);
    std::thread::scope(|s| {
        for _ in 0..opts.parallel.clamp(1, blocks) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let (i, body) = {
                    let mut g = file.lock().unwrap_or_else(|p| p.into_inner());
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= blocks {
                        return;
                    }
                    let len = (size - i as u64 * opts.block_bytes).min(opts.block_bytes) as usize;
                    let mut body = vec![0u8; len];
                    if let Err(e) = g.read_exact(&mut body) {
                        failed.store(true, Ordering::Relaxed);
                        *first_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(local(e));
                        return;
                    }
                    whole
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .consume(&body);
                    (i, body)
                };
                let md5 = b64(&md5::compute(&body).0);
                let block_url =
                    with_query(url, &format!("comp=block&blockid={}", urlencode(&ids[i])));
                if let Err(e) = put(
                    &agent,
                    &block_url,
                    &[("Content-MD5", md5)],
                    &body,
                    opts.retries,
                ) {
                    failed.store(true, Ordering::Relaxed);
                    let mut g = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    if g.is_none() {
                        *g = Some(e);
                    }
                    return;
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let digest = whole
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .compute();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for id in &ids {
        xml.push_str(&format!("<Latest>{id}</Latest>"));
    }
    xml.push_str("</BlockList>");
    put(
        &agent,
        &with_query(url, "comp=blocklist"),
        &[
            ("x-ms-blob-content-type", content_type.into()),
            // Stored with the blob, so readers can check the whole file.
            ("x-ms-blob-content-md5", b64(&digest.0)),
            ("Content-MD5", b64(&md5::compute(xml.as_bytes()).0)),
        ],
        xml.as_bytes(),
        opts.retries,
    )?;
    Ok(size)
}

/// The first line of the `<Message>` of a storage error body (the rest is request ids).
fn service_message(body: &str) -> String {
    let m = body
        .split_once("<Message>")
        .map(|(_, m)| m.split("</Message>").next().unwrap_or(m))
        .unwrap_or(body);
    m.lines().next().unwrap_or("").chars().take(200).collect()
}

/// Percent-encodes a block id (base64 has `+`, `/` and `=`).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_never_reach_logs() {
        assert_eq!(
            redact("https://a.blob.core.windows.net/c/x.mp4?sv=1&sig=SECRET"),
            "https://a.blob.core.windows.net/c/x.mp4"
        );
        assert_eq!(
            with_query("http://h/c/x?sig=1", "comp=block"),
            "http://h/c/x?sig=1&comp=block"
        );
        assert_eq!(urlencode("AB+/="), "AB%2B%2F%3D");
        assert_eq!(
            service_message("<?xml?><Error><Code>X</Code><Message>The container does not exist.\nRequestId:1</Message></Error>"),
            "The container does not exist."
        );
        assert_eq!(
            scrub("reading \"http://h:1/a/c/x.mp4?sv=1&sig=S\" failed (https://x/y?sig=T)"),
            "reading \"http://h:1/a/c/x.mp4\" failed (https://x/y)"
        );
    }

    #[test]
    fn a_missing_file_names_itself() {
        let e = upload_file(
            "http://127.0.0.1:9/c/x",
            Path::new("/nonexistent/x.mp4"),
            &TransferOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.mp4"), "{e}");
    }
}
