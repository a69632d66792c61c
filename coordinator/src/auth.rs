//! Who is calling: bearer tokens (from a file, never logged) mapped to a name and a role.
//! submitter: submits jobs, sees and cancels its own; viewer: reads every job and the
//! dashboard; worker: the WorkerService; admin: everything. With no tokens file the
//! coordinator is open (loopback use, the embedded `run`): every caller is an anonymous admin.

use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use tonic::{Request, Status};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Submitter,
    Viewer,
    Worker,
    Admin,
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

impl Identity {
    /// Whether this caller may read or cancel a job owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        match self.role {
            Role::Admin | Role::Viewer => true,
            Role::Submitter => self.name == owner,
            Role::Worker => false,
        }
    }

    /// Whether this caller may cancel a job owned by `owner`.
    pub fn may_cancel(&self, owner: &str) -> bool {
        self.role == Role::Admin || (self.role == Role::Submitter && self.name == owner)
    }

    /// The owner recorded on jobs this caller submits ("" when auth is off).
    pub fn owner(&self) -> &str {
        &self.name
    }
}

/// A tokens file that cannot be used, naming the file and the entry.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("tokens file {path}: {why}")]
    File { path: String, why: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    token: String,
}

/// One accepted token (its bytes) and whom it stands for.
type Entry = (Vec<u8>, Identity);

/// The tokens the coordinator accepts; `None` = auth off.
#[derive(Clone, Default)]
pub struct Tokens(Option<Arc<Vec<Entry>>>);

impl Tokens {
    /// Auth off: everyone is an anonymous admin.
    pub fn open() -> Tokens {
        Tokens(None)
    }

    /// Reads `[[tokens]]` entries (`name`, `role`, `token`) from a TOML file.
    pub fn load(path: &Path) -> Result<Tokens, AuthError> {
        let err = |why: String| AuthError::File {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: TokensFile = toml_parse(&text).map_err(err)?;
        if file.tokens.is_empty() {
            return Err(err("no [[tokens]] entries".into()));
        }
        let mut out: Vec<Entry> = Vec::new();
        for (i, t) in file.tokens.into_iter().enumerate() {
            if t.token.len() < 16 {
                return Err(err(format!(
                    "tokens[{i}] ({}): a token must be at least 16 characters",
                    t.name
                )));
            }
            if t.name.trim().is_empty() {
                return Err(err(format!("tokens[{i}]: name is empty")));
            }
            if out.iter().any(|(k, _)| k == t.token.as_bytes()) {
                return Err(err(format!(
                    "tokens[{i}] ({}): the same token twice",
                    t.name
                )));
            }
            out.push((
                t.token.into_bytes(),
                Identity {
                    name: t.name,
                    role: t.role,
                },
            ));
        }
        Ok(Tokens(Some(Arc::new(out))))
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The identity behind a presented token (every entry is compared, in constant time).
    pub fn identify(&self, presented: Option<&str>) -> Result<Identity, Status> {
        let Some(list) = &self.0 else {
            return Ok(Identity {
                name: String::new(),
                role: Role::Admin,
            });
        };
        let Some(p) = presented else {
            return Err(Status::unauthenticated(
                "no token: send `authorization: Bearer TOKEN` (framewise --token, or worker.token_file)",
            ));
        };
        let mut found = None;
        for (k, id) in list.iter() {
            if crate::web::constant_time_eq(k, p.as_bytes()) {
                found = Some(id.clone());
            }
        }
        found.ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

fn toml_parse(text: &str) -> Result<TokensFile, String> {
    use figment::providers::{Format, Toml};
    figment::Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| e.to_string())
}

/// The bearer token of a gRPC request, if any.
pub fn bearer<T>(req: &Request<T>) -> Option<&str> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Identifies the caller and checks its role is one of `allowed`.
pub fn require<T>(tokens: &Tokens, req: &Request<T>, allowed: &[Role]) -> Result<Identity, Status> {
    let id = tokens.identify(bearer(req))?;
    if !allowed.contains(&id.role) {
        return Err(Status::permission_denied(format!(
            "{} has role {:?}; this call needs one of {:?}",
            if id.name.is_empty() {
                "the caller"
            } else {
                &id.name
            },
            id.role,
            allowed
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Tokens, AuthError> {
        let p =
            std::env::temp_dir().join(format!("fw-tokens-{}-{}", std::process::id(), text.len()));
        std::fs::write(&p, text).unwrap();
        let r = Tokens::load(&p);
        let _ = std::fs::remove_file(&p);
        r
    }

    #[test]
    fn tokens_map_to_roles_and_bad_files_name_the_entry() {
        let t = file(
            "[[tokens]]\nname = \"a\"\nrole = \"submitter\"\ntoken = \"aaaaaaaaaaaaaaaa\"\n\
             [[tokens]]\nname = \"w\"\nrole = \"worker\"\ntoken = \"wwwwwwwwwwwwwwww\"\n",
        )
        .unwrap();
        assert_eq!(
            t.identify(Some("aaaaaaaaaaaaaaaa")).unwrap().role,
            Role::Submitter
        );
        assert_eq!(
            t.identify(Some("x")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            t.identify(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let e = file("[[tokens]]\nname = \"a\"\nrole = \"submitter\"\ntoken = \"short\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tokens[0] (a)") && e.contains("16"), "{e}");
        let e = file("[[tokens]]\nname = \"a\"\nrole = \"boss\"\ntoken = \"aaaaaaaaaaaaaaaa\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("boss"), "{e}");
        assert!(Tokens::open().identify(None).unwrap().role == Role::Admin);
    }

    #[test]
    fn submitters_see_only_their_own_jobs() {
        let a = Identity {
            name: "a".into(),
            role: Role::Submitter,
        };
        let v = Identity {
            name: "v".into(),
            role: Role::Viewer,
        };
        assert!(a.may_see("a") && !a.may_see("b") && a.may_cancel("a") && !a.may_cancel("b"));
        assert!(v.may_see("b") && !v.may_cancel("b"));
    }
}
