//! Test certificates, made by the real `openssl` (installed by `make test`), for 127.0.0.1:
//! self-signed, which curl (`--cacert`) and Chromium (by SPKI) trust by their own file, or
//! signed by a CA of their own, for clients that, like rustls, will not take a server's own
//! certificate as a root.

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
        std::fs::create_dir_all(dir).expect("certificate dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
                .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
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

/// A server certificate for 127.0.0.1 signed by a fresh CA, as files.
pub struct SignedCertificate {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SignedCertificate {
    /// Writes `ca.pem` (and its key), then `cert.pem` and `key.pem` for `CN=<name>`, valid for
    /// one day, in `dir`.
    pub fn issue(dir: &Path, name: &str) -> SignedCertificate {
        let ca = Certificate::issue(&dir.join("ca"), "streamguard test CA");
        let (csr, ext) = (dir.join("cert.csr"), dir.join("cert.ext"));
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write the extensions file");
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-nodes", "-subj", &format!("/CN={name}"), "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        );
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca.cert)
                .arg("-CAkey")
                .arg(&ca.key)
                .args(["-set_serial", "2", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        );
        SignedCertificate {
            ca: ca.cert,
            cert,
            key,
        }
    }
}

fn openssl(command: &mut Command) {
    let made = command
        .output()
        .expect("openssl is needed to make a test certificate (make test installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}
