//! The Azure Blob backend of `Store`: the only file that uses `azure_storage_blobs`
//! (no longer maintained upstream), so a switch to its successor touches this file alone.
//! Credentials come from `[storage.accounts.NAME]` or `AZURE_STORAGE_CONNECTION_STRING`;
//! they are never logged. The same configuration serves Azurite (its `BlobEndpoint`).

use super::{Access, BlobPath, Entry, StorageError};
use crate::config::{AccountConfig, StorageConfig};
use azure_core::auth::Secret;
use azure_storage::prelude::BlobSasPermissions;
use azure_storage::shared_access_signature::service_sas::{
    BlobSharedAccessSignature, BlobSignedResource,
};
use azure_storage::shared_access_signature::SasToken;
use azure_storage::{CloudLocation, ConnectionString, StorageCredentials};
use azure_storage_blobs::prelude::{BlobServiceClient, ClientBuilder};
use futures::StreamExt;
use std::time::Duration;

/// One storage account the coordinator may use.
pub struct Account {
    pub name: String,
    /// Blob endpoint without a trailing slash, e.g. `https://NAME.blob.core.windows.net`.
    endpoint: String,
    /// The account key, when known: needed to sign workers' URLs.
    key: Option<Secret>,
    client: BlobServiceClient,
}

fn cred_err(account: &str, why: impl Into<String>) -> StorageError {
    StorageError::Credentials {
        account: account.to_string(),
        why: why.into(),
    }
}

/// A value given inline or in a file (files keep secrets out of config files and `ps`).
fn secret(
    account: &str,
    inline: &str,
    file: &std::path::Path,
    key: &str,
) -> Result<Option<String>, StorageError> {
    if !inline.is_empty() {
        return Ok(Some(inline.trim().to_string()));
    }
    if file.as_os_str().is_empty() {
        return Ok(None);
    }
    std::fs::read_to_string(file)
        .map(|s| Some(s.trim().to_string()))
        .map_err(|e| cred_err(account, format!("{key} {}: {e}", file.display())))
}

impl Account {
    /// Every account named in the config, plus the one in `AZURE_STORAGE_CONNECTION_STRING`.
    pub fn from_config(cfg: &StorageConfig) -> Result<Vec<Account>, StorageError> {
        let mut out = Vec::new();
        for (name, a) in &cfg.accounts {
            out.push(Account::new(name, a)?);
        }
        if let Ok(cs) = std::env::var("AZURE_STORAGE_CONNECTION_STRING") {
            if !cs.trim().is_empty() {
                let acct = Account::from_connection_string(None, cs.trim(), "")?;
                if !out.iter().any(|a| a.name == acct.name) {
                    out.push(acct);
                }
            }
        }
        Ok(out)
    }

    fn new(name: &str, a: &AccountConfig) -> Result<Account, StorageError> {
        if let Some(cs) = secret(
            name,
            &a.connection_string,
            &a.connection_string_file,
            "connection_string_file",
        )? {
            return Account::from_connection_string(Some(name), &cs, &a.blob_endpoint);
        }
        let endpoint = if a.blob_endpoint.is_empty() {
            format!("https://{name}.blob.core.windows.net")
        } else {
            a.blob_endpoint.trim_end_matches('/').to_string()
        };
        if let Some(key) = secret(
            name,
            &a.account_key,
            &a.account_key_file,
            "account_key_file",
        )? {
            let creds = StorageCredentials::access_key(name.to_string(), Secret::new(key.clone()));
            return Ok(Account::build(
                name,
                endpoint,
                Some(Secret::new(key)),
                creds,
            ));
        }
        if let Some(sas) = secret(name, &a.sas_token, &a.sas_token_file, "sas_token_file")? {
            let creds = StorageCredentials::sas_token(sas.trim_start_matches('?'))
                .map_err(|e| cred_err(name, format!("sas_token: {e}")))?;
            return Ok(Account::build(name, endpoint, None, creds));
        }
        Err(cred_err(
            name,
            "no credential: set connection_string(_file), account_key(_file) or sas_token(_file)",
        ))
    }

    fn from_connection_string(
        name: Option<&str>,
        cs: &str,
        endpoint: &str,
    ) -> Result<Account, StorageError> {
        let label = name.unwrap_or("AZURE_STORAGE_CONNECTION_STRING");
        let parsed = ConnectionString::new(cs)
            .map_err(|e| cred_err(label, format!("connection string: {e}")))?;
        let account = parsed
            .account_name
            .ok_or_else(|| cred_err(label, "connection string has no AccountName"))?;
        if let Some(n) = name {
            if n != account {
                return Err(cred_err(
                    n,
                    format!("the connection string is for account {account:?}"),
                ));
            }
        }
        let endpoint = match (endpoint, parsed.blob_endpoint) {
            (e, _) if !e.is_empty() => e.trim_end_matches('/').to_string(),
            (_, Some(e)) => e.trim_end_matches('/').to_string(),
            (_, None) => format!(
                "https://{account}.blob.{}",
                parsed.endpoint_suffix.unwrap_or("core.windows.net")
            ),
        };
        let creds = parsed
            .storage_credentials()
            .map_err(|e| cred_err(account, format!("connection string: {e}")))?;
        let key = parsed.account_key.map(|k| Secret::new(k.to_string()));
        Ok(Account::build(account, endpoint, key, creds))
    }

    fn build(
        name: &str,
        endpoint: String,
        key: Option<Secret>,
        creds: StorageCredentials,
    ) -> Account {
        let client = ClientBuilder::with_location(
            CloudLocation::Custom {
                account: name.to_string(),
                uri: endpoint.clone(),
            },
            creds,
        )
        // Ride out a storage restart (seconds), but answer within half a minute when it is down.
        .retry(azure_core::RetryOptions::exponential(
            azure_core::ExponentialRetryOptions::default()
                .initial_delay(Duration::from_millis(200))
                .max_delay(Duration::from_secs(5))
                .max_retries(8u32)
                .max_total_elapsed(Duration::from_secs(30)),
        ))
        .blob_service_client();
        Account {
            name: name.to_string(),
            endpoint,
            key,
            client,
        }
    }

    /// The rest of `url` (`CONTAINER/BLOB`) when it lies under this account's endpoint.
    pub fn strip_endpoint<'u>(&self, url: &'u str) -> Option<&'u str> {
        let rest = url.strip_prefix(&self.endpoint)?.strip_prefix('/')?;
        Some(rest.split('?').next().unwrap_or(rest))
    }

    fn fail(b: &BlobPath, op: &'static str, e: azure_core::Error) -> StorageError {
        if e.as_http_error().map(|h| u16::from(h.status())) == Some(404) {
            return StorageError::NotFound { url: b.url() };
        }
        let why = match e.as_http_error() {
            Some(h) => format!(
                "HTTP {} {}",
                u16::from(h.status()),
                h.error_code().unwrap_or("")
            ),
            None => e.to_string(),
        };
        // Refusals (bad key, missing container, no permission) are not worth retrying.
        match e.as_http_error().map(|h| u16::from(h.status())) {
            Some(400..=499) => StorageError::Credentials {
                account: b.account.clone(),
                why: format!("{}: {op}: {why}", b.url()),
            },
            _ => StorageError::Failed {
                url: b.url(),
                op,
                why,
            },
        }
    }

    /// Whether this account's credential can sign workers' URLs (only the account key can).
    pub fn can_sign(&self) -> Result<(), StorageError> {
        match self.key {
            Some(_) => Ok(()),
            None => Err(cred_err(
                &self.name,
                "signing workers' URLs needs the account key (a connection string with AccountKey, or account_key): a SAS token cannot sign",
            )),
        }
    }

    /// A URL for this one blob with `access` until `valid_for` from now (service SAS, signed
    /// with the account key: nothing else of the account is reachable through it).
    pub fn sign(
        &self,
        b: &BlobPath,
        access: Access,
        valid_for: Duration,
    ) -> Result<String, StorageError> {
        self.can_sign()?;
        let Some(key) = self.key.clone() else {
            return Err(cred_err(&self.name, "no account key"));
        };
        let perms = match access {
            Access::Read => BlobSasPermissions {
                read: true,
                ..Default::default()
            },
            Access::Write => BlobSasPermissions {
                create: true,
                write: true,
                ..Default::default()
            },
        };
        let now = time::OffsetDateTime::now_utc();
        let expiry = now + time::Duration::seconds(valid_for.as_secs().max(60) as i64);
        let sas = BlobSharedAccessSignature::new(
            key,
            format!("/blob/{}/{}/{}", self.name, b.container, b.blob),
            perms,
            expiry,
            BlobSignedResource::Blob,
        )
        // Clocks differ between machines: valid from a few minutes ago.
        .start(now - time::Duration::minutes(5));
        let token = sas
            .token()
            .map_err(|e| cred_err(&self.name, format!("signing {}: {e}", b.url())))?;
        let mut url = self
            .client
            .container_client(b.container.clone())
            .blob_client(b.blob.clone())
            .url()
            .map_err(|e| Account::fail(b, "url", e))?;
        url.set_query(Some(&token));
        Ok(url.to_string())
    }

    fn blob(&self, b: &BlobPath) -> azure_storage_blobs::prelude::BlobClient {
        self.client
            .container_client(b.container.clone())
            .blob_client(b.blob.clone())
    }

    pub async fn size(&self, b: &BlobPath) -> Result<Option<u64>, StorageError> {
        match self.blob(b).get_properties().await {
            Ok(p) => Ok(Some(p.blob.properties.content_length)),
            Err(e) => match Account::fail(b, "get properties", e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    pub async fn get(&self, b: &BlobPath) -> Result<Vec<u8>, StorageError> {
        // A ranged read of an empty blob is refused (416): look at the length first.
        if self.size(b).await? == Some(0) {
            return Ok(Vec::new());
        }
        self.blob(b)
            .get_content()
            .await
            .map_err(|e| Account::fail(b, "read", e))
    }

    pub async fn put(&self, b: &BlobPath, data: Vec<u8>) -> Result<(), StorageError> {
        let md5 = md5::compute(&data);
        self.blob(b)
            .put_block_blob(data)
            .hash(azure_storage_blobs::prelude::Hash::MD5(md5.0))
            .await
            .map(|_| ())
            .map_err(|e| Account::fail(b, "write", e))
    }

    pub async fn ensure_container(&self, b: &BlobPath) -> Result<(), StorageError> {
        let c = self.client.container_client(b.container.clone());
        match c.exists().await {
            Ok(true) => Ok(()),
            Ok(false) => match c.create().await {
                Ok(_) => Ok(()),
                // Created meanwhile by someone else: fine.
                Err(e) if e.as_http_error().map(|h| u16::from(h.status())) == Some(409) => Ok(()),
                Err(e) => Err(Account::fail(b, "create container", e)),
            },
            Err(e) => Err(Account::fail(b, "look up container", e)),
        }
    }

    pub async fn delete(&self, b: &BlobPath) -> Result<(), StorageError> {
        match self.blob(b).delete().await {
            Ok(_) => Ok(()),
            Err(e) => match Account::fail(b, "delete", e) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Committed blobs whose names start with `prefix` (uncommitted uploads are not listed).
    pub async fn list(&self, container: &str, prefix: &str) -> Result<Vec<Entry>, StorageError> {
        let here = BlobPath {
            account: self.name.clone(),
            container: container.to_string(),
            blob: prefix.to_string(),
        };
        let mut stream = self
            .client
            .container_client(container.to_string())
            .list_blobs()
            .prefix(prefix.to_string())
            .into_stream();
        let mut out = Vec::new();
        while let Some(page) = stream.next().await {
            let page = page.map_err(|e| Account::fail(&here, "list", e))?;
            for blob in page.blobs.blobs() {
                out.push(Entry {
                    url: BlobPath {
                        blob: blob.name.clone(),
                        ..here.clone()
                    }
                    .url(),
                    name: blob.name.clone(),
                    etag: blob.properties.etag.to_string(),
                    size: blob.properties.content_length,
                    content_type: blob.properties.content_type.clone(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
