//! TLS for the served hub: certificates from files, or a generated CA and server
//! certificate, and a listener that hands finished TLS connections to axum.
//!
//! The official SDKs only speak HTTPS (the Python SDK hard-codes `https://` + HostName),
//! so `--tls-self-signed` makes a local CA once (kept beside the store, so clients keep
//! trusting it across restarts) and a fresh server certificate signed by it on every
//! start, for `localhost`, `127.0.0.1`, `::1` and the host name the connection string
//! names. Clients trust the CA file (`REQUESTS_CA_BUNDLE=<ca.pem>` for Python).
//!
//! rustls runs on the aws-lc-rs provider, named in the server configuration itself
//! (`builder_with_provider`): with more than one provider compiled in, rustls cannot pick a
//! process default by itself. ALPN
//! offers `http/1.1` first and `h2` second: clients that offer only HTTP/1.1 (or nothing)
//! must succeed.

use anyhow::{Context, Result, bail};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds a server config from PEM certificate chain and key files.
pub fn from_files(cert: &Path, key: &Path) -> Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("--tls-cert {}: cannot read it", cert.display()))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--tls-cert {}: not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        bail!("--tls-cert {}: holds no CERTIFICATE block", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "--tls-key {}: not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    config(certs, key)
}

fn config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not belong together")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok(cfg)
}

/// Files of a generated certificate authority and server certificate.
#[derive(Clone, Debug)]
pub struct SelfSigned {
    /// The CA certificate (PEM), the one clients trust.
    pub ca_cert: PathBuf,
    /// The CA's private key (PEM).
    pub ca_key: PathBuf,
    /// The server certificate signed by the CA (PEM).
    pub cert: PathBuf,
    /// The server certificate's private key (PEM).
    pub key: PathBuf,
}

impl SelfSigned {
    /// The file names in `dir`, prefixed with `stem` (the store's file stem).
    pub fn in_dir(dir: &Path, stem: &str) -> SelfSigned {
        SelfSigned {
            ca_cert: dir.join(format!("{stem}-ca.pem")),
            ca_key: dir.join(format!("{stem}-ca-key.pem")),
            cert: dir.join(format!("{stem}-cert.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        }
    }

    /// Makes the CA unless it exists, then a server certificate for `names` signed by it;
    /// returns the server config.
    pub fn ensure(&self, names: &[String]) -> Result<ServerConfig> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        if let Some(dir) = self.ca_cert.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // The CA's parameters are fixed, so an Issuer rebuilt from them and the stored key
        // signs certificates that chain to the stored CA certificate.
        let ca_params = || -> Result<CertificateParams> {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name
                .push(DnType::CommonName, "ringmaster embedded hub CA");
            p.distinguished_name
                .push(DnType::OrganizationName, "ringmaster");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.not_before = rcgen::date_time_ymd(2024, 1, 1);
            p.not_after = rcgen::date_time_ymd(2044, 1, 1);
            Ok(p)
        };
        let ca_key = if self.ca_cert.exists() && self.ca_key.exists() {
            let pem = std::fs::read_to_string(&self.ca_key)
                .with_context(|| format!("cannot read {}", self.ca_key.display()))?;
            KeyPair::from_pem(&pem)
                .with_context(|| format!("{}: not a private key", self.ca_key.display()))?
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&self.ca_key, &key.serialize_pem())?;
            std::fs::write(&self.ca_cert, cert.pem())
                .with_context(|| format!("cannot write {}", self.ca_cert.display()))?;
            key
        };
        let issuer = Issuer::new(ca_params()?, ca_key);

        let mut p = CertificateParams::new(names.to_vec())?;
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("localhost"),
        );
        p.use_authority_key_identifier_extension = true;
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = jiff::Timestamp::now().as_second();
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        // A year from now; regenerated on every start anyway.
        let year = 1970 + (now / 31_557_600) as i32 + 1;
        p.not_after = rcgen::date_time_ymd(year, 12, 31);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        write_private(&self.key, &key.serialize_pem())?;
        std::fs::write(&self.cert, cert.pem())
            .with_context(|| format!("cannot write {}", self.cert.display()))?;
        from_files(&self.cert, &self.key)
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above applies only to a new file: one left by an older run keeps its own.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    f.write_all(pem.as_bytes())?;
    Ok(())
}

/// The acceptor that runs the TLS handshake on each connection ([`crate::net::serve_with`]
/// runs it in the connection's own task, within the header-read timeout, so a slow
/// client cannot stall accepts).
pub fn acceptor(cfg: ServerConfig) -> TlsAcceptor {
    TlsAcceptor::from(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_ca_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let files = SelfSigned::in_dir(dir.path(), "hub");
        files
            .ensure(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let ca1 = std::fs::read_to_string(&files.ca_cert).unwrap();
        let cert1 = std::fs::read_to_string(&files.cert).unwrap();
        files.ensure(&["localhost".into()]).unwrap();
        assert_eq!(ca1, std::fs::read_to_string(&files.ca_cert).unwrap());
        assert_ne!(cert1, std::fs::read_to_string(&files.cert).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.ca_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "CA key must be private");
        }
    }

    /// Both private keys are 0600, also when a file from an older run was readable by
    /// others (a mode given at creation does not change an existing file).
    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = SelfSigned::in_dir(dir.path(), "hub");
        std::fs::write(&files.key, "old").unwrap();
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        files.ensure(&["localhost".into()]).unwrap();
        for key in [&files.ca_key, &files.key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }
}
