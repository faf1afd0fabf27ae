//! TLS: the server's certificate, key and client CA read from their files,
//! checked, and made into a `rustls::ServerConfig` that speaks TLS 1.3 only
//! (ring provider, the three TLS 1.3 AEAD suites, ALPN `h2`) and requires a
//! client certificate that chains to the client CA.
//!
//! [`Reloadable`] holds the current configuration: each new connection takes
//! the one in force when it arrives, and [`Reloadable::reload`] (on SIGHUP)
//! replaces it only when the new files load completely, so a broken file
//! keeps the old configuration and live connections are never touched.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use jobworker_identity::parse_certificate;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The files the TLS configuration is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate chain, leaf first (`server_cert`).
    pub server_cert: PathBuf,
    /// The server's private key (`server_key`).
    pub server_key: PathBuf,
    /// The client CA certificates (`client_ca`).
    pub client_ca: PathBuf,
}

/// Why the TLS configuration could not be made. Each message names the
/// configuration key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key} {}: {error}", path.display())]
    Read {
        /// The configuration key of the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// A file does not hold what it should.
    #[error("{key} {}: {reason}", path.display())]
    Content {
        /// The configuration key of the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is accessible by group or others.
    #[error(
        "server_key {}: mode {mode:04o} lets group or others access the private key; \
         make it readable by its owner only (chmod 600 {})",
        path.display(), path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The client CA is the CA that signed the server certificate.
    #[error(
        "client_ca {} holds the CA that signed server_cert {}: client certificates must \
         come from a separate CA",
        client_ca.display(), server_cert.display()
    )]
    SameCa {
        /// The client CA file.
        client_ca: PathBuf,
        /// The server certificate file.
        server_cert: PathBuf,
    },
    /// rustls refused the certificate, key or CA.
    #[error("{what}: {reason}")]
    Rustls {
        /// What was being built.
        what: String,
        /// rustls's reason.
        reason: String,
    },
}

/// The ring provider with the three TLS 1.3 AEAD suites and nothing else.
pub fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_256_GCM_SHA384,
        TLS13_AES_128_GCM_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    provider
}

/// Reads the files and builds the server configuration.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs("server_cert", &files.server_cert)?;
    let key = read_key(&files.server_key)?;
    let cas = read_certs("client_ca", &files.client_ca)?;
    check_separate_cas(files, &chain, &cas)?;

    let provider = Arc::new(provider());
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| TlsError::Content {
            key: "client_ca",
            path: files.client_ca.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Content {
            key: "client_ca",
            path: files.client_ca.clone(),
            reason: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls {
            what: "selecting TLS 1.3".into(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls {
            what: format!(
                "server_cert {} with server_key {}",
                files.server_cert.display(),
                files.server_key.display()
            ),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Reads every PEM certificate of a file; at least one.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|error| TlsError::Read {
        key,
        path: path.to_path_buf(),
        error,
    })?;
    let content = |reason: String| TlsError::Content {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(content("holds no PEM certificate".into()));
    }
    for cert in &certs {
        parse_certificate(cert).map_err(|e| content(e.to_string()))?;
    }
    Ok(certs)
}

/// Reads the private key, refusing it when group or others may access it.
/// The mode is checked on the open file, so it is the mode of what is read.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read_error = |error| TlsError::Read {
        key: "server_key",
        path: path.to_path_buf(),
        error,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_error)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Content {
        key: "server_key",
        path: path.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "holds no PEM private key".into(),
            e => format!("not a PEM private key: {e}"),
        },
    })
}

/// Refuses a client CA that is the issuer of the server certificate: the
/// two roles must never share a CA, or a server certificate could pass as a
/// client's.
fn check_separate_cas(
    files: &TlsFiles,
    chain: &[CertificateDer<'static>],
    cas: &[CertificateDer<'static>],
) -> Result<(), TlsError> {
    let Some(leaf) = chain.first() else {
        return Ok(());
    };
    let leaf = parse_certificate(leaf).map_err(|e| TlsError::Content {
        key: "server_cert",
        path: files.server_cert.clone(),
        reason: e.to_string(),
    })?;
    for ca in cas {
        let ca = parse_certificate(ca).map_err(|e| TlsError::Content {
            key: "client_ca",
            path: files.client_ca.clone(),
            reason: e.to_string(),
        })?;
        if ca.subject().as_raw() == leaf.issuer().as_raw() {
            return Err(TlsError::SameCa {
                client_ca: files.client_ca.clone(),
                server_cert: files.server_cert.clone(),
            });
        }
    }
    Ok(())
}

/// The TLS configuration in force, replaceable while serving.
pub struct Reloadable {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    /// Loads the files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(config),
        })
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }

    /// Loads the files again; on success new connections use them, on
    /// failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The files this process cannot open now (so a reload would fail),
    /// with the reason.
    pub fn unreadable(&self) -> Vec<(PathBuf, io::Error)> {
        [
            &self.files.server_cert,
            &self.files.server_key,
            &self.files.client_ca,
        ]
        .into_iter()
        .filter_map(|path| File::open(path).err().map(|e| (path.clone(), e)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use jobworker_certs::{
        CaKind, ClientRequest, Overwrite, ServerRequest, Validity, issue_client, issue_server,
    };

    use super::*;

    fn pki() -> (tempfile::TempDir, TlsFiles) {
        let dir = tempfile::tempdir().unwrap();
        let validity = Validity::days_from_now(1).unwrap();
        jobworker_certs::init(dir.path(), &validity, Overwrite::Refuse).unwrap();
        issue_server(
            dir.path(),
            &ServerRequest {
                host: "localhost".into(),
                extra_names: vec!["127.0.0.1".into()],
                validity,
                prefix: "server".into(),
                overwrite: Overwrite::Refuse,
            },
        )
        .unwrap();
        let files = TlsFiles {
            server_cert: dir.path().join("server.pem"),
            server_key: dir.path().join("server.key"),
            client_ca: CaKind::Client.cert_path(dir.path()),
        };
        (dir, files)
    }

    #[test]
    fn good_files_make_a_tls13_h2_config() {
        let (_dir, files) = pki();
        let config = load(&files).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let suites = &config.crypto_provider().cipher_suites;
        assert_eq!(suites.len(), 3);
        assert!(
            suites
                .iter()
                .all(|s| s.version() == &rustls::version::TLS13)
        );
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let (_dir, files) = pki();
        for mode in [0o640, 0o604, 0o660, 0o644] {
            std::fs::set_permissions(&files.server_key, std::fs::Permissions::from_mode(mode))
                .unwrap();
            let err = load(&files).unwrap_err().to_string();
            assert!(
                err.contains(&format!("mode {mode:04o}")) && err.contains("chmod 600"),
                "{err}"
            );
        }
        std::fs::set_permissions(&files.server_key, std::fs::Permissions::from_mode(0o400))
            .unwrap();
        load(&files).unwrap();
    }

    #[test]
    fn the_server_ca_as_client_ca_is_refused() {
        let (dir, mut files) = pki();
        files.client_ca = CaKind::Server.cert_path(dir.path());
        let err = load(&files).unwrap_err().to_string();
        assert!(err.contains("separate CA"), "{err}");
    }

    #[test]
    fn broken_files_are_named() {
        let (dir, files) = pki();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem at all\n").unwrap();
        let cases = [
            (
                TlsFiles {
                    server_cert: garbage.clone(),
                    ..files.clone()
                },
                "server_cert",
            ),
            (
                TlsFiles {
                    client_ca: garbage.clone(),
                    ..files.clone()
                },
                "client_ca",
            ),
            (
                TlsFiles {
                    server_cert: dir.path().join("missing.pem"),
                    ..files.clone()
                },
                "server_cert",
            ),
        ];
        for (files, key) in cases {
            let err = load(&files).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
        // A key that does not belong to the certificate.
        issue_client(
            dir.path(),
            &ClientRequest {
                user: "alice".into(),
                role_values: vec!["user".into()],
                validity: Validity::days_from_now(1).unwrap(),
                prefix: "alice".into(),
                overwrite: Overwrite::Refuse,
            },
        )
        .unwrap();
        let err = load(&TlsFiles {
            server_key: dir.path().join("alice.key"),
            ..files
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("server_key"), "{err}");
    }

    #[test]
    fn a_failed_reload_keeps_the_old_config() {
        let (_dir, files) = pki();
        let tls = Reloadable::load(files.clone()).unwrap();
        let before = tls.acceptor().config().clone();
        std::fs::write(&files.server_cert, "broken").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, tls.acceptor().config()));
        assert!(tls.unreadable().is_empty());
    }
}
