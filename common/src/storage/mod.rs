//! Storage locations and the one `Store` every part of framewise reads and
//! writes through. A job names its input and output by URL: local files
//! (`file:///abs/path` or a plain absolute path, the embedded default) or
//! Azure Blob (`az://ACCOUNT/CONTAINER/PATH`, or the blob's
//! `https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH` URL, stored as
//! `az://`). The coordinator holds the storage credentials; workers get only
//! short-lived URLs signed for one blob and one kind of access (`sas.rs`).

pub mod azure;
pub mod sas;

use crate::config::StorageConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// A URL framewise cannot use.
#[derive(Debug, Error, PartialEq)]
pub enum UrlError {
    #[error("unsupported storage URL {0:?}: use file:///absolute/path, an absolute path, az://ACCOUNT/CONTAINER/PATH or https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH")]
    Unsupported(String),
    #[error("storage path must be absolute: {0:?}")]
    Relative(String),
    #[error("storage URL {url:?}: {why}")]
    Invalid { url: String, why: String },
}

/// A storage operation that failed, naming the URL (account, container and blob) at fault.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("no credentials for storage account {account:?} ({url}): set [storage.accounts.{account}] (connection_string_file, account_key_file, ...) or AZURE_STORAGE_CONNECTION_STRING")]
    NoAccount { account: String, url: String },
    #[error("storage account {account:?}: {why}")]
    Credentials { account: String, why: String },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: {op}: {why}")]
    Failed {
        url: String,
        op: &'static str,
        why: String,
    },
}

impl StorageError {
    /// Whether trying again later cannot help (bad URL, credentials, permissions, missing blob).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, StorageError::Failed { .. })
    }
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Azure(BlobPath),
}

/// One blob (or blob-name prefix) in an Azure storage account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobPath {
    pub account: String,
    pub container: String,
    pub blob: String,
}

impl BlobPath {
    /// The canonical `az://` URL, the form the coordinator records.
    pub fn url(&self) -> String {
        format!("az://{}/{}/{}", self.account, self.container, self.blob)
    }
}

impl Location {
    /// The canonical URL of this location.
    pub fn url(&self) -> String {
        match self {
            Location::File(p) => file_url(p),
            Location::Azure(b) => b.url(),
        }
    }

    /// Whether workers reach this location over HTTP (signed URLs) rather than a shared disk.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Azure(_))
    }
}

/// The local path behind a `file://` URL or a plain absolute path.
pub fn local_path(url: &str) -> Result<PathBuf, UrlError> {
    let p = match url.strip_prefix("file://") {
        Some(rest) => rest,
        None if url.contains("://") => return Err(UrlError::Unsupported(url.to_string())),
        None => url,
    };
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(UrlError::Relative(url.to_string()));
    }
    Ok(path)
}

/// The `file://` URL of an absolute path.
pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Whether a URL is fetched over HTTP (a signed blob URL) rather than read from a local disk.
pub fn is_http(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// Parses a URL without consulting any configuration (`Store::locate` also knows configured
/// endpoints such as Azurite's).
pub fn parse(url: &str) -> Result<Location, UrlError> {
    parse_as(url, false)
}

/// Like `parse`, for a prefix: `az://ACCOUNT/CONTAINER/` (a whole container) is allowed.
pub fn parse_prefix(url: &str) -> Result<Location, UrlError> {
    parse_as(url, true)
}

fn parse_as(url: &str, prefix: bool) -> Result<Location, UrlError> {
    if let Some(rest) = url.strip_prefix("az://") {
        let mut it = rest.splitn(3, '/');
        let (account, container, blob) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        return blob_path(url, account, container, blob, prefix).map(Location::Azure);
    }
    if let Some(rest) = url.strip_prefix("https://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(account) = host.strip_suffix(".blob.core.windows.net") {
            if path.contains('?') {
                return Err(invalid(
                    url,
                    "give the blob URL without a query (no SAS): the coordinator signs its own",
                ));
            }
            let (container, blob) = path.split_once('/').unwrap_or((path, ""));
            return blob_path(url, account, container, blob, prefix).map(Location::Azure);
        }
        return Err(UrlError::Unsupported(url.to_string()));
    }
    local_path(url).map(Location::File)
}

fn invalid(url: &str, why: &str) -> UrlError {
    UrlError::Invalid {
        url: url.to_string(),
        why: why.to_string(),
    }
}

/// Checks the names Azure accepts, so a typo is refused at submit rather than after a probe.
fn blob_path(
    url: &str,
    account: &str,
    container: &str,
    blob: &str,
    prefix: bool,
) -> Result<BlobPath, UrlError> {
    let lower_alnum = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    if account.len() < 3 || account.len() > 24 || !lower_alnum(account) {
        return Err(invalid(
            url,
            "account name must be 3 to 24 lowercase letters and digits",
        ));
    }
    let container_ok = (3..=63).contains(&container.len())
        && container
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--");
    if !container_ok {
        return Err(invalid(url, "container name must be 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit"));
    }
    if blob.is_empty() && !prefix {
        return Err(invalid(url, "no blob name after the container"));
    }
    if blob.len() > 1024 {
        return Err(invalid(url, "blob name longer than 1024 characters"));
    }
    if blob.split('/').any(|s| s == "." || s == "..") {
        return Err(invalid(url, "blob name may not contain . or .. segments"));
    }
    Ok(BlobPath {
        account: account.to_string(),
        container: container.to_string(),
        blob: blob.to_string(),
    })
}

/// `base/name` for a directory or blob-name prefix URL.
pub fn join(base: &str, name: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), name)
}

/// The file name of the chunk whose first frame is `first` inside an attempt's output prefix.
pub fn chunk_name(first: u64) -> String {
    format!("{first:09}.mp4")
}

/// What a signed URL lets its holder do to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read (including ranged reads) and nothing else.
    Read,
    /// Create or overwrite that one blob (with its blocks); no read, list or delete.
    Write,
}

/// One blob as a listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Canonical URL.
    pub url: String,
    /// Name relative to the listed prefix's container.
    pub name: String,
    pub etag: String,
    pub size: u64,
    pub content_type: String,
}

/// Every storage operation of the coordinator, the CLI and the tests, by URL.
#[derive(Clone, Default)]
pub struct Store {
    accounts: HashMap<String, Arc<azure::Account>>,
    /// Containers known to exist (account, container): checked once, not on every submit.
    ensured: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

impl Store {
    /// Reads the credentials named in `[storage]` (files and environment), never logging them.
    pub fn from_config(cfg: &StorageConfig) -> Result<Store, StorageError> {
        let mut accounts = HashMap::new();
        for acct in azure::Account::from_config(cfg)? {
            accounts.insert(acct.name.clone(), Arc::new(acct));
        }
        Ok(Store {
            accounts,
            ..Default::default()
        })
    }

    /// Parses a URL, also mapping a configured account's own endpoint (e.g. Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1/...`) to its `az://` location.
    pub fn locate(&self, url: &str) -> Result<Location, UrlError> {
        self.locate_as(url, false)
    }

    /// Like `locate`, for a prefix (a whole container is allowed).
    pub fn locate_prefix(&self, url: &str) -> Result<Location, UrlError> {
        self.locate_as(url, true)
    }

    fn locate_as(&self, url: &str, prefix: bool) -> Result<Location, UrlError> {
        if is_http(url) {
            for a in self.accounts.values() {
                if let Some(rest) = a.strip_endpoint(url) {
                    let (container, blob) = rest.split_once('/').unwrap_or((rest, ""));
                    return blob_path(url, &a.name, container, blob, prefix).map(Location::Azure);
                }
            }
        }
        parse_as(url, prefix)
    }

    /// Creates the container of a blob location if it does not exist (nothing for a file).
    pub async fn ensure_container(&self, url: &str) -> Result<(), StorageError> {
        let Location::Azure(b) = self.locate_prefix(url)? else {
            return Ok(());
        };
        let key = (b.account.clone(), b.container.clone());
        if self.ensured.lock().is_ok_and(|s| s.contains(&key)) {
            return Ok(());
        }
        self.account(&b)?.ensure_container(&b).await?;
        if let Ok(mut s) = self.ensured.lock() {
            s.insert(key);
        }
        Ok(())
    }

    /// Whether workers' URLs can be signed for a location (a blob account needs its key):
    /// checked at start and submit rather than at the first lease.
    pub fn check_signable(&self, loc: &Location) -> Result<(), StorageError> {
        match loc {
            Location::File(_) => Ok(()),
            Location::Azure(b) => self.account(b)?.can_sign(),
        }
    }

    fn account(&self, b: &BlobPath) -> Result<&azure::Account, StorageError> {
        self.accounts
            .get(&b.account)
            .map(|a| a.as_ref())
            .ok_or_else(|| StorageError::NoAccount {
                account: b.account.clone(),
                url: b.url(),
            })
    }

    /// A URL that grants `access` to this one location until `valid_for` from now; for a
    /// local file, the file URL itself.
    pub fn sign(
        &self,
        url: &str,
        access: Access,
        valid_for: Duration,
    ) -> Result<String, StorageError> {
        match self.locate(url)? {
            Location::File(p) => Ok(file_url(&p)),
            Location::Azure(b) => self.account(&b)?.sign(&b, access, valid_for),
        }
    }

    /// Size in bytes, or `None` when nothing is there.
    pub async fn size(&self, url: &str) -> Result<Option<u64>, StorageError> {
        match self.locate(url)? {
            Location::File(p) => Ok(std::fs::metadata(&p).ok().map(|m| m.len())),
            Location::Azure(b) => self.account(&b)?.size(&b).await,
        }
    }

    /// The whole object.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, StorageError> {
        match self.locate(url)? {
            Location::File(p) => std::fs::read(&p).map_err(|e| io_error(&p, "read", e)),
            Location::Azure(b) => self.account(&b)?.get(&b).await,
        }
    }

    /// Writes the whole object, visible only once complete.
    pub async fn put(&self, url: &str, data: Vec<u8>) -> Result<(), StorageError> {
        match self.locate(url)? {
            Location::File(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create", e))?;
                }
                let tmp = p.with_extension("partial-put");
                std::fs::write(&tmp, &data).map_err(|e| io_error(&tmp, "write", e))?;
                std::fs::rename(&tmp, &p).map_err(|e| io_error(&p, "rename", e))
            }
            Location::Azure(b) => self.account(&b)?.put(&b, data).await,
        }
    }

    /// Deletes one object; one that is already gone is fine.
    pub async fn delete(&self, url: &str) -> Result<(), StorageError> {
        match self.locate(url)? {
            Location::File(p) => match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(&p, "delete", e)),
            },
            Location::Azure(b) => self.account(&b)?.delete(&b).await,
        }
    }

    /// Deletes everything under a directory or blob-name prefix.
    pub async fn delete_prefix(&self, url: &str) -> Result<usize, StorageError> {
        match self.locate_prefix(url)? {
            Location::File(p) => {
                let n = std::fs::read_dir(&p).map(|d| d.count()).unwrap_or(0);
                match std::fs::remove_dir_all(&p) {
                    Ok(()) => Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                    Err(e) => Err(io_error(&p, "delete", e)),
                }
            }
            Location::Azure(b) => {
                let acct = self.account(&b)?;
                let prefix = match b.blob.trim_end_matches('/') {
                    "" => String::new(),
                    p => format!("{p}/"),
                };
                let entries = acct.list(&b.container, &prefix).await?;
                for e in &entries {
                    let child = BlobPath {
                        blob: e.name.clone(),
                        ..b.clone()
                    };
                    acct.delete(&child).await?;
                }
                Ok(entries.len())
            }
        }
    }

    /// Every committed blob (or file) whose name starts with the URL's path, in name order.
    pub async fn list(&self, url: &str) -> Result<Vec<Entry>, StorageError> {
        match self.locate_prefix(url)? {
            Location::File(p) => list_files(&p),
            Location::Azure(b) => self.account(&b)?.list(&b.container, &b.blob).await,
        }
    }
}

fn io_error(p: &Path, op: &'static str, e: std::io::Error) -> StorageError {
    StorageError::Failed {
        url: file_url(p),
        op,
        why: e.to_string(),
    }
}

/// Files directly inside a directory URL (a file prefix is a directory here).
fn list_files(dir: &Path) -> Result<Vec<Entry>, StorageError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, "list", e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = e.path();
        out.push(Entry {
            url: file_url(&path),
            name: e.file_name().to_string_lossy().into_owned(),
            // Size and mtime stand in for an ETag: a rewritten file is a new version.
            etag: format!("{}-{modified}", meta.len()),
            size: meta.len(),
            content_type: String::new(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip() {
        assert_eq!(
            local_path("file:///a/b.mp4").unwrap(),
            PathBuf::from("/a/b.mp4")
        );
        assert_eq!(local_path("/a/b.mp4").unwrap(), PathBuf::from("/a/b.mp4"));
        assert_eq!(file_url(Path::new("/x/y")), "file:///x/y");
        assert!(matches!(
            local_path("az://acct/c/x"),
            Err(UrlError::Unsupported(_))
        ));
        assert!(matches!(
            local_path("rel/x.mp4"),
            Err(UrlError::Relative(_))
        ));
    }

    #[test]
    fn azure_urls_parse_to_one_canonical_form() {
        let want = Location::Azure(BlobPath {
            account: "media01".into(),
            container: "incoming".into(),
            blob: "a/b c.mp4".into(),
        });
        assert_eq!(parse("az://media01/incoming/a/b c.mp4").unwrap(), want);
        assert_eq!(
            parse("https://media01.blob.core.windows.net/incoming/a/b c.mp4").unwrap(),
            want
        );
        assert_eq!(want.url(), "az://media01/incoming/a/b c.mp4");
        assert!(want.is_remote());
        assert!(!parse("/x.mp4").unwrap().is_remote());
    }

    #[test]
    fn bad_azure_urls_name_the_problem() {
        let why = |u: &str| match parse(u) {
            Err(UrlError::Invalid { why, .. }) => why,
            other => panic!("{u}: {other:?}"),
        };
        assert!(why("az://Media/incoming/x.mp4").contains("account name"));
        assert!(why("az://media/In_coming/x.mp4").contains("container name"));
        assert!(why("az://media/incoming").contains("no blob name"));
        assert!(why("az://media/incoming/").contains("no blob name"));
        assert!(matches!(
            parse_prefix("az://media/incoming/"),
            Ok(Location::Azure(BlobPath { blob, .. })) if blob.is_empty()
        ));
        assert!(why("az://media/incoming/../x").contains(".."));
        assert!(why("https://media.blob.core.windows.net/c0c/x?sig=1").contains("no SAS"));
        assert!(matches!(
            parse("https://example.com/x.mp4"),
            Err(UrlError::Unsupported(_))
        ));
        assert!(matches!(parse("s3://b/x"), Err(UrlError::Unsupported(_))));
    }

    #[test]
    fn chunk_names_sort_in_frame_order() {
        assert_eq!(chunk_name(7), "000000007.mp4");
        assert!(chunk_name(99) < chunk_name(100));
        assert_eq!(join("az://a1b/c0c/w/", "x"), "az://a1b/c0c/w/x");
    }

    #[test]
    fn files_list_put_and_delete() {
        let dir = std::env::temp_dir().join(format!("fw-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = file_url(&dir.join("a.mp4"));
            store.put(&a, b"12345".to_vec()).await.unwrap();
            assert_eq!(store.size(&a).await.unwrap(), Some(5));
            assert_eq!(store.get(&a).await.unwrap(), b"12345");
            let l = store.list(&file_url(&dir)).await.unwrap();
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].name, "a.mp4");
            store.delete(&a).await.unwrap();
            store.delete(&a).await.unwrap();
            assert_eq!(store.size(&a).await.unwrap(), None);
            assert_eq!(
                store
                    .sign(&a, Access::Read, Duration::from_secs(1))
                    .unwrap(),
                a
            );
            assert!(matches!(
                store.get("az://nobody1/c0c/x").await,
                Err(StorageError::NoAccount { .. })
            ));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
