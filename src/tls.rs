//! TLS for the HTTPS listener (docs/request-lifecycle.md, step 1) and for outgoing connections: one
//! crypto provider (aws-lc-rs) passed explicitly, never a process default, so
//! no second provider in the dependency graph can make a builder panic.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, Tls, TlsVersion};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Build the listener's `ServerConfig`: the certificate chain, the key, the
/// minimum version, and ALPN `h2` then `http/1.1`.
///
/// With `self_signed_if_missing` and neither file present (as `check` sees it
/// before `run` has created them), a throwaway in-memory certificate is used.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, ConfigError> {
    let (certs, key) = if tls.self_signed_if_missing && !tls.cert.exists() && !tls.key.exists() {
        let unusable = |e: String| ConfigError::new("tls.self_signed_if_missing", e);
        let (cert, key) = self_signed(&dev_hosts()).map_err(unusable)?;
        let cert = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| unusable(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| unusable(e.to_string()))?;
        (vec![cert], key)
    } else {
        let certs = load_certs(&tls.cert).map_err(|e| ConfigError::new("tls.cert", e))?;
        let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
            let message = format!(
                "cannot load a PKCS#8, PKCS#1 or SEC1 private key from {}",
                tls.key.display()
            );
            ConfigError::new("tls.key", message).because(e)
        })?;
        (certs, key)
    };
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| ConfigError::new("tls.min_version", "not supported by the TLS library").because(e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::new("tls", "the certificate and key do not form a usable pair").because(e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (tickets, sessions) = resumption();
    if let Some(tickets) = tickets {
        config.ticketer = tickets;
    }
    config.session_storage = sessions;
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// Session resumption, kept across reloads (a new `ServerConfig` per reload
/// must still accept the tickets of the one before): stateless tickets (TLS
/// 1.3 and 1.2; AES-256 + HMAC-SHA256, keys random per process and rotated
/// every 6 hours, tickets valid 12 hours) and, for TLS 1.2 clients that use
/// session IDs, a bounded in-memory cache. A resumed handshake skips the
/// certificate signature, the costliest step of a full one.
fn resumption() -> (
    Option<Arc<dyn rustls::server::ProducesTickets>>,
    Arc<dyn rustls::server::StoresServerSessions>,
) {
    use std::sync::OnceLock;
    type Shared = (
        Option<Arc<dyn rustls::server::ProducesTickets>>,
        Arc<dyn rustls::server::StoresServerSessions>,
    );
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            // `None` only without randomness for ticket keys: then rustls's
            // default, no tickets (the session cache still resumes).
            let tickets = rustls::crypto::aws_lc_rs::Ticketer::new().ok();
            (tickets, rustls::server::ServerSessionMemoryCache::new(4096))
        })
        .clone()
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} contains no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

/// A digest of a `ca_file`'s content, so that a reload can tell whether the
/// file changed under an unchanged configuration. `None` when there is none.
pub(crate) fn ca_digest(path: Option<&Path>) -> Option<[u8; 32]> {
    let bytes = std::fs::read(path?).ok()?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    digest.as_ref().try_into().ok()
}

/// Trust anchors from a PEM file (for `ca_file`).
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A self-signed development certificate and its PKCS#8 key, both PEM.
pub fn self_signed(hosts: &[String]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hosts.first().cloned().unwrap_or_default());
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The names a development certificate covers by default.
pub fn dev_hosts() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// Write a certificate and key; the key is readable by its owner only.
pub fn write_pair(cert_path: &Path, key_path: &Path, cert_pem: &str, key_pem: &str) -> std::io::Result<()> {
    for p in [cert_path, key_path] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(cert_path, cert_pem)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(key_path)?, key_pem.as_bytes())
}

/// `self_signed_if_missing`: create a localhost certificate when neither file
/// exists. Returns whether one was created.
pub fn ensure_self_signed(tls: &Tls) -> Result<bool, ConfigError> {
    const FIELD: &str = "tls.self_signed_if_missing";
    if !tls.self_signed_if_missing || tls.cert.exists() || tls.key.exists() {
        return Ok(false);
    }
    let (cert, key) = self_signed(&dev_hosts()).map_err(|e| ConfigError::new(FIELD, e))?;
    write_pair(&tls.cert, &tls.key, &cert, &key).map_err(|e| {
        let message = format!("cannot write {} / {}", tls.cert.display(), tls.key.display());
        ConfigError::new(FIELD, message).because(e)
    })?;
    Ok(true)
}
