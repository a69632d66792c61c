//! `framewise storage`: copy a file into or out of a storage location and list a prefix, with
//! the credentials of `[storage]` (what a media team uses to drop a video for the trigger, and
//! what the benchmarks use; any Azure tool does the same).

use crate::cli::StorageCommand;
use anyhow::{Context, Result};
use framewise_common::storage::Store;
use std::process::ExitCode;

pub fn run(config: Option<&std::path::Path>, cmd: StorageCommand) -> Result<ExitCode> {
    let cfg = crate::load_config(config, "config/coordinator.toml")?;
    let store = Store::from_config(&cfg.storage)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        StorageCommand::Put { file, url } => {
            let data = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            let n = data.len();
            rt.block_on(async {
                store.ensure_container(&url).await?;
                store.put(&url, data).await
            })?;
            eprintln!("{} -> {url} ({n} bytes)", file.display());
        }
        StorageCommand::Get { url, file } => {
            let data = rt.block_on(store.get(&url))?;
            std::fs::write(&file, &data).with_context(|| format!("{}", file.display()))?;
            eprintln!("{url} -> {} ({} bytes)", file.display(), data.len());
        }
        StorageCommand::Ls { url } => {
            for e in rt.block_on(store.list(&url))? {
                println!("{}\t{}\t{}", e.size, e.etag, e.url);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
