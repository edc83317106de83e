//! Where directory and git modes find a Hub's connection string: the secret source of the
//! [hub resolver](crate::resolver).
//!
//! Secrets never come from the source (files in the directory, the repository). The
//! connection string of Hub `<name>` in namespace `<ns>` is read, first found wins, from
//! - the environment variable `RINGMASTER_HUB_<NS>_<NAME>` (upper case, every other
//!   character as `_`), then
//! - the file `<--hub-secrets-dir>/<ns>/<name>`.
//!
//! A connection string is bound to one Hub, namespace and name: nothing is read by name
//! alone (no `RINGMASTER_HUB_<NAME>`, no `<--hub-secrets-dir>/<name>`), so that a file in
//! one namespace cannot borrow the credential of another namespace's Hub. The CA trusted
//! for `https` hubs is `--hub-ca`. Both are read on every reconcile that needs them, so a
//! rotated file is picked up without a restart.

use crate::resolver::{HubConfigError, HubProblem, HubSecret, ResolveError, SecretSource};
use crate::resources::Hub;
use async_trait::async_trait;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

/// How to reach hubs outside the process: where connection strings are, which CA to trust.
#[derive(Clone, Debug, Default)]
pub struct HubAccess {
    /// `--hub-secrets-dir`.
    pub secrets_dir: Option<PathBuf>,
    /// `--hub-ca`, read.
    pub ca_pem: Option<Vec<u8>>,
}

/// `part` as it goes into an environment variable's name.
fn env_name(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The environment variable holding the connection string of Hub `name` in `namespace`.
pub fn env_var(namespace: &str, name: &str) -> String {
    format!("RINGMASTER_HUB_{}_{}", env_name(namespace), env_name(name))
}

/// Changes when the secret does; shows nothing of it (it is never displayed anyway).
fn version(origin: &str, value: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    format!("{origin}#{:x}", h.finish())
}

#[async_trait]
impl SecretSource for HubAccess {
    type Error = Infallible;

    async fn secret(
        &self,
        namespace: &str,
        hub: &Hub,
        what: &str,
    ) -> Result<HubSecret, ResolveError<Infallible>> {
        let name = hub.metadata.name.as_deref().unwrap_or_default();
        let var = env_var(namespace, name);
        let found = match std::env::var(&var) {
            Ok(v) => Some((v, format!("environment variable {var}"))),
            Err(_) => match &self.secrets_dir {
                Some(dir) => {
                    let path = dir.join(namespace).join(name);
                    match std::fs::read_to_string(&path) {
                        Ok(v) => Some((v, format!("file {}", path.display()))),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => {
                            return Err(HubConfigError::new(
                                namespace,
                                name,
                                HubProblem::SecretNotFound,
                                format!(
                                    "{what} needs a connection string: cannot read {}: {e}",
                                    path.display()
                                ),
                            )
                            .into());
                        }
                    }
                }
                None => None,
            },
        };
        let Some((value, origin)) = found else {
            let file = match &self.secrets_dir {
                Some(dir) => format!("the file {}", dir.join(namespace).join(name).display()),
                None => format!("--hub-secrets-dir DIR with the file DIR/{namespace}/{name}"),
            };
            return Err(HubConfigError::new(
                namespace,
                name,
                HubProblem::SecretNotFound,
                format!(
                    "{what} needs the hub's service connection string: set the environment variable {var} \
                     or give {file} (a connection string is read for this namespace and name only)"
                ),
            )
            .into());
        };
        let value = value.trim().to_string();
        Ok(HubSecret {
            version: version(&origin, &value),
            connection_string: value,
            ca_pem: self.ca_pem.clone(),
            origin,
        })
    }
}
