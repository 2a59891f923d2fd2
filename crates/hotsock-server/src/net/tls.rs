//! TLS for `wss://`: the certificate chain and key of `[server.tls]`,
//! loaded into a rustls server config (ring provider; no OpenSSL). The
//! server loads them at start and again at every reload; connections take
//! the config current when they are accepted, so a swap affects new
//! handshakes only and never an open connection.
//!
//! This module reads files and builds configs; it never touches a socket
//! (the handshake itself is `conn.rs`'s, under the handshake deadline).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why `[server.tls]` could not be loaded. Each names the key and the file,
/// since the operator fixes one of the two.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("server.tls.{key}: cannot read {}: {source}", path.display())]
    Read {
        /// `cert` or `key`.
        key: &'static str,
        /// The file, resolved against the config file's directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("server.tls.{key}: {} is not valid PEM: {problem}", path.display())]
    Pem {
        /// `cert` or `key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's words.
        problem: String,
    },
    /// The certificate file has no certificate in it.
    #[error("server.tls.cert: no certificate found in {} (expected a PEM \"BEGIN CERTIFICATE\" block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file has no private key in it.
    #[error(
        "server.tls.key: no private key found in {} (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is not the certificate's.
    #[error("server.tls.key: the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the pair for another reason (an unsupported key type).
    #[error("server.tls: {} with {}: {message}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's words.
        message: String,
    },
}

impl TlsError {
    /// The config key to point at: the file that needs fixing.
    pub fn config_key(&self) -> &'static str {
        match self {
            TlsError::Read { key: "key", .. } | TlsError::Pem { key: "key", .. } => "server.tls.key",
            TlsError::NoKey { .. } | TlsError::Mismatch { .. } => "server.tls.key",
            _ => "server.tls.cert",
        }
    }
}

/// Reads `[server.tls]` (paths relative to `base_dir`) into a server config.
pub(crate) fn load(tls: &TlsConfig, base_dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = (base_dir.join(&tls.cert), base_dir.join(&tls.key));
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.to_owned(), source })
    };
    let pem_error = |key: &'static str, path: &Path| {
        let path = path.to_owned();
        move |e: pem::Error| TlsError::Pem { key, path, problem: e.to_string() }
    };
    let cert_pem = read("cert", &cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error("cert", &cert_path))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let key_pem = read("key", &key_path)?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey { path: key_path }),
        Err(e) => return Err(pem_error("key", &key_path)(e)),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected { cert: cert_path.clone(), key: key_path.clone(), message: e.to_string() })?;
    let mut config = builder.with_no_client_auth().with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch { cert: cert_path.clone(), key: key_path.clone() },
        other => TlsError::Rejected { cert: cert_path.clone(), key: key_path.clone(), message: other.to_string() },
    })?;
    // The upgrade is HTTP/1.1; saying so lets clients that offer ALPN (all
    // browsers) settle on it instead of guessing.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
