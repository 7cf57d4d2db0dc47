//! TLS for the HTTP API: rustls with the ring provider (the same as the
//! clients'), a certificate chain and key from PEM files, or a self-signed
//! certificate generated for development (`keybridge demo`, `--tls-self-signed`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ServerError;

/// Where the server's certificate chain and private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_pem: PathBuf,
    /// Read once at start-up; never logged.
    pub key_pem: PathBuf,
}

/// Builds the rustls server configuration: TLS 1.2 and 1.3, HTTP/1.1 only
/// (the relay's WebSocket upgrade is an HTTP/1.1 mechanism).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        ServerError::Config(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&files.cert_pem)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("reading the TLS certificate", &files.cert_pem, &e))?;
    if certs.is_empty() {
        return Err(ServerError::Config(format!(
            "no certificate in {}",
            files.cert_pem.display()
        )));
    }
    // The error names the file, never its contents.
    let key = PrivateKeyDer::from_pem_file(&files.key_pem)
        .map_err(|e| bad("reading the TLS key", &files.key_pem, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Config(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Config(format!("TLS certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed certificate for `names` (DNS names or IP addresses), written
/// to `dir` as `tls-cert.pem` and `tls-key.pem` (mode 0600). Clients trust it
/// with `--ca-cert dir/tls-cert.pem`. For development only.
pub fn write_self_signed(dir: &Path, names: &[String]) -> Result<TlsFiles, ServerError> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| ServerError::Config(format!("generating a self-signed certificate: {e}")))?;
    let files = TlsFiles {
        cert_pem: dir.join("tls-cert.pem"),
        key_pem: dir.join("tls-key.pem"),
    };
    std::fs::write(&files.cert_pem, certified.cert.pem()).map_err(ServerError::io(format!(
        "writing {}",
        files.cert_pem.display()
    )))?;
    write_private(
        &files.key_pem,
        certified.key_pair.serialize_pem().as_bytes(),
    )?;
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(ServerError::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            write_self_signed(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let config = server_config(&files).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_missing_or_empty_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let files = TlsFiles {
            cert_pem: empty.clone(),
            key_pem: empty,
        };
        assert!(matches!(server_config(&files), Err(ServerError::Config(_))));
        let missing = TlsFiles {
            cert_pem: dir.path().join("nope.pem"),
            key_pem: dir.path().join("nope.pem"),
        };
        assert!(matches!(
            server_config(&missing),
            Err(ServerError::Config(_))
        ));
    }
}
