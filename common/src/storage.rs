//! Storage locations. Jobs name their input and output by URL; this release
//! knows local files (`file:///abs/path` or a plain absolute path).

use std::path::{Path, PathBuf};
use thiserror::Error;

/// A URL framewise cannot use.
#[derive(Debug, Error, PartialEq)]
pub enum UrlError {
    #[error("unsupported storage URL {0:?}: use file:///absolute/path or an absolute path")]
    Unsupported(String),
    #[error("storage path must be absolute: {0:?}")]
    Relative(String),
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
}
