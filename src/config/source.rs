//! What a configuration was read from, and which configuration is in force.
//!
//! A configuration is its file plus every file it names (key files, certificates, a password).
//! A reload re-reads all of them, `server.watch_config` polls all of them (Kubernetes updates a
//! mounted ConfigMap or Secret by swapping a symlink, which a watch on the file alone misses), and
//! the fingerprint of all their contents is the configuration's identity in the reload log line,
//! on the status page and in `streamguard_config_info`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::digest::{Context, SHA256};

use super::env::{substitute, EnvSource};
use super::raw::RawConfig;
use super::{Config, ConfigError};

/// Where the configuration comes from: the file and the environment its `${VAR}`s read. The
/// process keeps it so that a reload reads the same way start-up did.
#[derive(Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub env: Arc<dyn EnvSource + Send + Sync>,
}

impl ConfigSource {
    pub fn new(path: PathBuf, env: Arc<dyn EnvSource + Send + Sync>) -> ConfigSource {
        ConfigSource { path, env }
    }

    /// Reads and validates the configuration as it is on disk now (see [`super::load`]).
    pub fn load(&self) -> Result<Config, ConfigError> {
        super::load(&self.path, self.env.as_ref())
    }

    /// The fingerprint the configuration on disk has now, given the files the configuration in
    /// force names (a changed text changes the fingerprint whatever files it names). `None`
    /// when the config file cannot be read.
    pub fn fingerprint_now(&self, files: &[PathBuf]) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        Some(fingerprint(&text, files))
    }
}

/// The files a configuration names, resolved against the config file's directory, in a fixed
/// order. A value that does not substitute is left out: validation reports it.
pub(super) fn named_files(raw: &RawConfig, base_dir: &Path, env: &dyn EnvSource) -> Vec<PathBuf> {
    let store = raw.limits.store.as_ref().map(|store| store.get_ref());
    let store_password = store.and_then(|store| store.password_file.as_ref());
    let store_ca = store.and_then(|store| store.ca_file.as_ref());
    [
        raw.listen.tls_cert_file.as_ref(),
        raw.listen.tls_key_file.as_ref(),
        raw.auth.secret_file.as_ref(),
        raw.auth.public_key_file.as_ref(),
        raw.auth.jwks_file.as_ref(),
        store_password,
        store_ca,
    ]
    .into_iter()
    .flatten()
    .filter_map(|value| substitute(value.get_ref(), env).ok())
    .map(|path| base_dir.join(path))
    .collect()
}

/// A SHA-256 over the config text and the current contents of `files` (each length-prefixed, so
/// moving bytes from one file to the next changes it), as 16 hex digits. An unreadable file
/// counts as empty: validation has refused it already, or it vanished since.
pub fn fingerprint(text: &str, files: &[PathBuf]) -> String {
    let mut hash = Context::new(&SHA256);
    let mut add = |bytes: &[u8]| {
        hash.update(&(bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    add(text.as_bytes());
    for file in files {
        add(&std::fs::read(file).unwrap_or_default());
    }
    hash.finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_every_file() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("jwt.key");
        std::fs::write(&key, "one").expect("write");
        let files = vec![key.clone()];
        let first = fingerprint("a = 1", &files);
        assert_eq!(first.len(), 16);
        assert_eq!(first, fingerprint("a = 1", &files), "stable");
        assert_ne!(first, fingerprint("a = 2", &files), "the text");
        std::fs::write(&key, "two").expect("write");
        assert_ne!(first, fingerprint("a = 1", &files), "a named file");
        // Bytes moved between the text and a file make another fingerprint.
        std::fs::write(&key, "ab").expect("write");
        assert_ne!(
            fingerprint("x", &files),
            fingerprint("xa", &[dir.path().join("b")])
        );
    }
}
