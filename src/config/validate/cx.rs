//! The validation context: the file's text for line numbers, the base directory and environment
//! for files and `${VAR}`s, and the errors found so far. Its helpers attach the dotted key and
//! the line to every error, so the section modules only say which parser and default a key uses.

use std::fmt::Display;
use std::path::Path;

use toml::Spanned;

use crate::config::env::{substitute, EnvSource};
use crate::config::raw::{Text, TextList};
use crate::config::KeyError;

/// Validation state: where to find lines and files, and the errors found so far.
pub(super) struct Cx<'a> {
    pub(super) text: &'a str,
    pub(super) base_dir: &'a Path,
    pub(super) env: &'a dyn EnvSource,
    pub(super) errors: Vec<KeyError>,
}

impl Cx<'_> {
    pub(super) fn line<T>(&self, value: &Spanned<T>) -> usize {
        crate::config::position(self.text, value.span().start).0
    }

    pub(super) fn error(
        &mut self,
        key: impl Into<String>,
        line: Option<usize>,
        message: impl Into<String>,
    ) {
        self.errors.push(KeyError {
            key: key.into(),
            line,
            message: message.into(),
        });
    }

    /// Checks one optional leaf; on failure records the error at the leaf's line.
    /// `None` means absent or invalid: callers fall back to the default either way, because
    /// an invalid value already guarantees the whole load fails.
    pub(super) fn value<T, U, E: Display>(
        &mut self,
        key: &str,
        raw: Option<&Spanned<T>>,
        check: impl FnOnce(&T) -> Result<U, E>,
    ) -> Option<U> {
        let raw = raw?;
        match check(raw.get_ref()) {
            Ok(value) => Some(value),
            Err(e) => {
                let line = self.line(raw);
                self.error(key, Some(line), e.to_string());
                None
            }
        }
    }

    /// A string leaf: `${VAR}` substitution first, then `parse`.
    pub(super) fn text<U, E: Display>(
        &mut self,
        key: &str,
        raw: Option<&Text>,
        parse: impl FnOnce(&str) -> Result<U, E>,
    ) -> Option<U> {
        let env = self.env;
        self.value(key, raw, |s: &String| {
            let s = substitute(s, env).map_err(|e| e.to_string())?;
            parse(&s).map_err(|e| e.to_string())
        })
    }

    /// A list of string leaves, each checked (and keyed `key[i]`) on its own; invalid items
    /// are dropped after being reported.
    pub(super) fn text_list<U, E: Display>(
        &mut self,
        key: &str,
        raw: Option<&TextList>,
        mut parse: impl FnMut(&str) -> Result<U, E>,
    ) -> Option<Vec<U>> {
        let items = raw?.get_ref();
        Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.text(&format!("{key}[{i}]"), Some(item), &mut parse))
                .collect(),
        )
    }
}
