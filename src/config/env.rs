//! `${VAR}` / `${VAR:-default}` substitution in config strings.
//!
//! Secrets and per-environment addresses belong in the environment, not in a file that gets
//! committed. The lookup goes through [`EnvSource`] so tests never touch the process
//! environment (which is shared between test threads).

use std::collections::HashMap;

/// Where `${VAR}` values come from.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        // A non-UTF-8 value cannot be placed into a TOML string; treat it as unset so the
        // error names the variable instead of silently mangling it.
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A string whose `${...}` references cannot be resolved. Messages never quote the string
/// itself: it may be a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstError {
    #[error(
        "environment variable {name} is not set (referenced as ${{{name}}}); \
         export it, or give a default with ${{{name}:-default}}"
    )]
    Undefined { name: String },
    #[error(
        "\"${{\" at byte {at} has no closing \"}}\"; write ${{VAR}}, or \"$$\" for a literal \"$\""
    )]
    Unterminated { at: usize },
    #[error(
        "the variable name after \"${{\" at byte {at} is invalid; names are letters, digits and \
         '_' and do not start with a digit (write \"$$\" for a literal \"$\")"
    )]
    BadName { at: usize },
}

/// Expands `${VAR}` and `${VAR:-default}` (the default also applies when VAR is empty, as in
/// the shell) and turns `$$` into `$`. The default is taken literally. A `$` followed by
/// anything else is kept as is, so secrets that happen to contain `$` need no escaping.
pub fn substitute(input: &str, env: &dyn EnvSource) -> Result<String, SubstError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let at = input.len() - rest.len() + dollar;
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let close = body.find('}').ok_or(SubstError::Unterminated { at })?;
            out.push_str(&expand(&body[..close], at, env)?);
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves the inside of one `${...}`.
fn expand(reference: &str, at: usize, env: &dyn EnvSource) -> Result<String, SubstError> {
    let (name, default) = match reference.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (reference, None),
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(SubstError::BadName { at });
    }
    match (env.var(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_owned()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err(SubstError::Undefined {
            name: name.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [("HOST", "app"), ("PORT", "3000"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn substitution() {
        let cases: &[(&str, Result<&str, SubstError>)] = &[
            ("plain", Ok("plain")),
            ("${HOST}:${PORT}", Ok("app:3000")),
            ("${MISSING:-fallback}", Ok("fallback")),
            ("${EMPTY:-fallback}", Ok("fallback")),
            ("${EMPTY}", Ok("")),
            ("${HOST:-unused}", Ok("app")),
            ("${MISSING:-}", Ok("")),
            ("cost: $$5", Ok("cost: $5")),
            ("$${HOST}", Ok("${HOST}")),
            ("a$b$", Ok("a$b$")),
            (
                "${MISSING}",
                Err(SubstError::Undefined {
                    name: "MISSING".into(),
                }),
            ),
            ("x${HOST", Err(SubstError::Unterminated { at: 1 })),
            ("${}", Err(SubstError::BadName { at: 0 })),
            ("ab${1X}", Err(SubstError::BadName { at: 2 })),
            ("${A B}", Err(SubstError::BadName { at: 0 })),
        ];
        for (input, want) in cases {
            let got = substitute(input, &env());
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{input:?}"
            );
        }
    }

    #[test]
    fn undefined_names_the_variable() {
        let message = substitute("${JWT_SECRET}", &env())
            .expect_err("undefined variable must fail")
            .to_string();
        assert!(message.contains("JWT_SECRET is not set"), "{message}");
    }
}
