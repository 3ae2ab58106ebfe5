//! `--key value` / `--flag` command lines, parsed once into a map.

use std::collections::HashMap;
use std::str::FromStr;

pub struct Args {
    values: HashMap<String, String>,
    pub positional: Vec<String>,
}

impl Args {
    /// Every `--key` takes the next word as its value unless that word starts with `--`
    /// (then the key is a boolean flag).
    pub fn parse(words: impl IntoIterator<Item = String>) -> Args {
        let mut values = HashMap::new();
        let mut positional = Vec::new();
        let mut words = words.into_iter().peekable();
        while let Some(w) = words.next() {
            if let Some(key) = w.strip_prefix("--") {
                if let Some((k, v)) = key.split_once('=') {
                    values.insert(k.to_owned(), v.to_owned());
                } else if words.peek().is_some_and(|n| !n.starts_with("--")) {
                    values.insert(key.to_owned(), words.next().unwrap_or_default());
                } else {
                    values.insert(key.to_owned(), "true".to_owned());
                }
            } else {
                positional.push(w);
            }
        }
        Args { values, positional }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.str(key).unwrap_or(default)
    }

    pub fn flag(&self, key: &str) -> bool {
        self.str(key).is_some_and(|v| v != "false")
    }

    /// A typed value, or `default`; exits with a message on a bad value.
    pub fn get<T: FromStr>(&self, key: &str, default: T) -> T {
        match self.str(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("bad value for --{key}: {v:?}");
                std::process::exit(2)
            }),
        }
    }

    /// A comma-separated list (empty when absent).
    pub fn list<T: FromStr>(&self, key: &str) -> Vec<T> {
        self.str(key)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| {
                        s.trim().parse().unwrap_or_else(|_| {
                            eprintln!("bad item in --{key}: {s:?}");
                            std::process::exit(2)
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
