//! Test certificates, made by the real `openssl` (installed by `make test`): self-signed, for
//! 127.0.0.1, so a client trusts them with `--cacert` (curl) or by their own file.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its key, as files.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificate {
    /// Writes (or overwrites) `cert.pem` and `key.pem` in `dir`: a P-256 certificate with
    /// subject `CN=<name>`, valid for one day for IP 127.0.0.1.
    pub fn issue(dir: &Path, name: &str) -> Certificate {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl is needed to make a test certificate (make test installs it)");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        Certificate { cert, key }
    }

    /// The base64 SHA-256 of the public key: what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes.
    pub fn spki(&self) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der \
                 | openssl dgst -sha256 -binary | base64",
                self.cert.display()
            ))
            .output()
            .expect("openssl");
        let spki = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!spki.is_empty(), "no SPKI hash for {}", self.cert.display());
        spki
    }

    /// The `[listen]` keys that serve this certificate.
    pub fn listen_keys(&self) -> String {
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}
