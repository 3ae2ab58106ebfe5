//! streamguard's configuration layer: `proxy.toml` in, a fully checked [`Config`] out.
//!
//! The pipeline is TOML text -> `raw` structs (serde, unknown keys rejected, every leaf
//! [`toml::Spanned`]) -> `validate` (defaults, `${VAR}` substitution, unit parsing, cross-key
//! rules) -> [`Config`]. Validation collects every problem before failing, so one run of
//! `streamguard check` shows all of them with their keys and lines.
//!
//! `${VAR}` substitution runs per string leaf during validation rather than on a
//! `toml::Value` tree up front: the raw structs are deserialized straight from the text, so
//! every span still points into the file the operator wrote, and a missing variable is
//! reported with the dotted key and line that referenced it. Syntax errors, wrong value types
//! and unknown keys come from serde, which stops at the first one; those are reported alone as
//! [`ConfigError::Toml`].

mod env;
mod raw;
mod show;
mod source;
pub mod types;
mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use env::{EnvSource, ProcessEnv, SubstError};
pub use show::show;
pub use source::{fingerprint, ConfigSource};
pub use types::*;
pub use units::{
    format_duration, format_rate, format_size, parse_duration, parse_rate, parse_size, UnitError,
};

/// Why a config file could not be turned into a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad TOML syntax, a value of the wrong type, or an unknown key.
    #[error("{}", toml_location(*line, *column, message))]
    Toml {
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// Every semantic problem found, in file order.
    #[error("{}", invalid_list(.0))]
    Invalid(Vec<KeyError>),
}

/// One invalid key: which one, where, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Dotted path, e.g. `cors.allowed_origins[2]` or `route[1].limits.max_streams_per_user`.
    pub key: String,
    /// 1-based line in the config file, when the key appears in it.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn toml_location(line: Option<usize>, column: Option<usize>, message: &str) -> String {
    match (line, column) {
        (Some(line), Some(column)) => {
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        _ => format!("invalid TOML: {message}"),
    }
}

fn invalid_list(errors: &[KeyError]) -> String {
    let plural = if errors.len() == 1 { "" } else { "s" };
    let mut out = format!("invalid configuration ({} error{plural}):", errors.len());
    for error in errors {
        out.push_str("\n  ");
        out.push_str(&error.to_string());
    }
    out
}

/// Reads and validates the config file at `path`; relative file paths inside it (secrets,
/// keys, certificates) are resolved against the file's directory.
pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    parse_str(&text, base_dir, env)
}

/// Validates config text; relative file paths inside it are resolved against `base_dir`.
pub fn parse_str(text: &str, base_dir: &Path, env: &dyn EnvSource) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let position = e.span().map(|span| position(text, span.start));
        ConfigError::Toml {
            message: e.message().trim_end().to_owned(),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
        }
    })?;
    validate::validate(&raw, text, base_dir, env).map_err(ConfigError::Invalid)
}

/// 1-based (line, column) of a byte offset, counting columns in characters.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, Path::new("."), &HashMap::new())
    }

    #[test]
    fn positions() {
        let text = "a = 1\nbé = 2\n";
        let cases = [
            (0, (1, 1)),
            (4, (1, 5)),
            (6, (2, 1)),
            (10, (2, 4)),
            (999, (3, 1)),
        ];
        for (offset, want) in cases {
            assert_eq!(position(text, offset), want, "{offset}");
        }
    }

    /// Unknown keys come from serde: the message names the key and the line is kept.
    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let base = "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth]\nmode = \"off\"\n";
        let cases = [
            ("top level", format!("{base}colour = 1\n"), "colour", 5),
            (
                "section",
                format!("[cors]\nallowed_origin = []\n{base}"),
                "allowed_origin",
                2,
            ),
            (
                "route",
                format!("{base}[[route]]\npath = \"/a\"\nsse = {{ heartbeet = \"1s\" }}\n"),
                "heartbeet",
                7,
            ),
            (
                "route table",
                format!("{base}[[route]]\npath = \"/a\"\nrole = []\n"),
                "role",
                7,
            ),
        ];
        for (name, text, key, want_line) in cases {
            match parse(&text) {
                Err(ConfigError::Toml { message, line, .. }) => {
                    assert!(
                        message.contains(&format!("unknown field `{key}`")),
                        "{name}: {message}"
                    );
                    assert_eq!(line, Some(want_line), "{name}");
                }
                other => panic!("{name}: expected a TOML error, got {other:?}"),
            }
        }
    }

    #[test]
    fn syntax_and_type_errors_have_positions() {
        let cases = [("[upstream\n", 1), ("[server]\nthreads = \"two\"\n", 2)];
        for (text, want_line) in cases {
            let err = parse(text).expect_err("must fail");
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("invalid TOML at line {want_line}")),
                "{shown}"
            );
        }
    }

    #[test]
    fn invalid_lists_one_error_per_line() {
        let err = ConfigError::Invalid(vec![
            KeyError {
                key: "server.threads".into(),
                line: Some(3),
                message: "0 is below the minimum of 1".into(),
            },
            KeyError {
                key: "upstream.address".into(),
                line: None,
                message: "missing".into(),
            },
        ]);
        assert_eq!(
            err.to_string(),
            "invalid configuration (2 errors):\n  line 3: server.threads: 0 is below the minimum \
             of 1\n  upstream.address: missing"
        );
    }

    #[test]
    fn load_reads_relative_files_next_to_the_config() {
        let dir = std::env::temp_dir().join(format!("sg-config-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("jwt.key"), "0123456789abcdef0123456789abcdef\n").expect("key");
        let config_path = dir.join("proxy.toml");
        std::fs::write(
            &config_path,
            "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth]\nsecret_file = \"jwt.key\"\n",
        )
        .expect("config");
        let loaded = load(&config_path, &HashMap::new());
        let missing = load(&dir.join("absent.toml"), &HashMap::new());
        std::fs::remove_dir_all(&dir).expect("cleanup");

        match loaded.expect("valid config").auth.key {
            Some(KeySource::Secret(bytes)) => {
                assert_eq!(bytes, b"0123456789abcdef0123456789abcdef".to_vec());
            }
            other => panic!("expected a secret, got {other:?}"),
        }
        assert!(matches!(missing, Err(ConfigError::Io { .. })));
    }
}
