//! The certificate the proxy listener presents, as part of the policy.
//!
//! The certificate is loaded with the rest of a configuration, so a reload that renews it
//! swaps it with everything else, and a certificate that does not load (a key that does not
//! match, a file cert-manager has half written) fails the reload and leaves the running one in
//! place. The listener resolves the certificate of the policy in force at each handshake;
//! connections already open keep the session they negotiated.

use std::sync::Arc;

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::config::TlsFiles;

use super::State;

/// Why the listener's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "listen.tls_cert_file / listen.tls_key_file: cannot read {0}; \
         give PEM files with the certificate chain and its private key"
    )]
    Read(String),
    #[error(
        "listen.tls_cert_file / listen.tls_key_file: no certificate or no private key found; \
         give PEM files with the certificate chain (leaf first) and a PKCS#8, PKCS#1 or SEC1 key"
    )]
    Missing,
    #[error("listen.tls_key_file: the key does not fit the certificate ({0}); give the pair that belongs together")]
    Key(String),
}

/// Reads the certificate chain and key named by `files` and checks that they belong together.
pub fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    pingora::tls::install_default_crypto_provider();
    let (certs, key) = pingora::tls::load_certs_and_key_files(
        &files.cert_file.to_string_lossy(),
        &files.key_file.to_string_lossy(),
    )
    .map_err(|e| TlsError::Read(e.to_string()))?
    .ok_or(TlsError::Missing)?;
    // Installed just above; the provider is process-wide.
    let provider = CryptoProvider::get_default().ok_or(TlsError::Missing)?;
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| TlsError::Key(e.to_string()))
}

/// Answers each TLS handshake with the certificate of the policy in force.
pub struct PolicyCertificate {
    state: Arc<State>,
}

impl PolicyCertificate {
    pub fn new(state: Arc<State>) -> PolicyCertificate {
        PolicyCertificate { state }
    }
}

impl std::fmt::Debug for PolicyCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyCertificate")
    }
}

impl ResolvesServerCert for PolicyCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.state.policy().tls.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    /// A fresh self-signed pair from openssl (`make test` installs it).
    fn pair(dir: &Path, name: &str) -> TlsFiles {
        let files = TlsFiles {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
        };
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&files.key_file)
            .arg("-out")
            .arg(&files.cert_file)
            .output()
            .expect("openssl makes the test certificates");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        files
    }

    #[test]
    fn loads_a_pair_and_refuses_what_is_not_one() {
        let dir = tempfile::tempdir().expect("dir");
        let one = pair(dir.path(), "one");
        let two = pair(dir.path(), "two");
        assert!(load(&one).is_ok());

        let crossed = TlsFiles {
            cert_file: one.cert_file.clone(),
            key_file: two.key_file.clone(),
        };
        assert!(
            matches!(load(&crossed), Err(TlsError::Key(_))),
            "a key from another pair"
        );

        let absent = TlsFiles {
            cert_file: dir.path().join("absent.crt"),
            key_file: one.key_file.clone(),
        };
        assert!(matches!(load(&absent), Err(TlsError::Read(_))));

        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "").expect("write");
        let no_key = TlsFiles {
            cert_file: one.cert_file,
            key_file: empty,
        };
        assert!(matches!(load(&no_key), Err(TlsError::Missing)));
    }
}
