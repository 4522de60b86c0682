//! Environment overrides of config keys, for containers: `STARLING_<SECTION>_<KEY>`, array
//! elements by number (`STARLING_LISTENER_0_BIND=0.0.0.0:1883`,
//! `STARLING_LIMITS_MAX_INFLIGHT=100`, `STARLING_LOG_LEVEL=debug`). Also what turns a failed
//! deserialization into a message naming the key (`listener[1].bind: ...`), for the file and
//! for the overrides alike.
//!
//! The overrides are applied to the parsed TOML tree before it is deserialized, so every key
//! works without a list of keys here:
//!
//! * the name after `STARLING_` is split at `_` and matched against the tree, the longest
//!   known key first (keys contain underscores): a key is known when the file has it or the
//!   serialized default config does. A table or an array named on the way that the file does
//!   not have is first copied from the defaults (`STARLING_LISTENER_0_BIND` without a file
//!   changes the default listener's address). An array index may name the next element, which
//!   is appended (`STARLING_LISTENER_1_BIND` adds a second listener).
//! * what is left after the last table is the key, even if neither the file nor the defaults
//!   has it (optional keys such as `password_file` are absent from both); every table of the
//!   config refuses unknown keys, so a misspelt variable is an error naming it.
//! * the value is read as a TOML value (integer, float, boolean, array, inline table) when it
//!   parses as one, else as the string it is; where the key wants a string, or the TOML
//!   reading does not fit, the raw string is used (`STARLING_MQTT_RESPONSE_INFORMATION_PREFIX=1`
//!   is the string `"1"`).
//!
//! Every `STARLING_*` variable must name a key, except those in [`NOT_CONFIG`] (used by tests
//! and scripts): a variable that names nothing stops the broker rather than being ignored.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// The prefix of every override.
pub const PREFIX: &str = "STARLING_";

/// `STARLING_*` variables that are not config keys and are left alone: `STARLING_BIN` (the
/// binary the interoperability tests run) and `STARLING_GIT_COMMIT` (set by the build script
/// for the compiler; cargo also sets it when it runs the binary or its tests) and
/// `STARLING_API_KEY` (the key `starling ctl` sends).
pub const NOT_CONFIG: &[&str] = &["STARLING_BIN", "STARLING_GIT_COMMIT", "STARLING_API_KEY"];

/// A deserialization error with the key it is about (`listener[1].bind`), when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedError {
    /// The key, as `table.key` with array elements as `[n]`; `None` for the whole document
    /// (a TOML syntax error: its message quotes the line).
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for KeyedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for KeyedError {}

/// What is wrong with the overrides.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The variable's value is not UTF-8.
    #[error("environment variable {var}: the value is not UTF-8")]
    NotUnicode {
        /// The variable.
        var: String,
    },
    /// The name cannot be a key path (an empty part, an index into something that is not an
    /// array, an index beyond the end).
    #[error("environment variable {var}: {reason}")]
    Name {
        /// The variable.
        var: String,
        /// Why.
        reason: String,
    },
    /// The value, or the key, is refused by the config.
    #[error("environment variable {var} ({key}): {message}")]
    Invalid {
        /// The variable.
        var: String,
        /// The key it sets.
        key: String,
        /// Why it is refused.
        message: String,
    },
    /// The config, changed by the overrides, does not deserialize, and the error cannot be
    /// tied to one variable.
    #[error("with the environment overrides {vars}: {error}")]
    Combined {
        /// Every variable applied.
        vars: String,
        /// The error.
        error: KeyedError,
    },
}

/// The `STARLING_*` variables to apply, sorted by name.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    vars: Vec<(String, String)>,
}

impl Overrides {
    /// No overrides.
    pub fn none() -> Self {
        Self::default()
    }

    /// The process environment's `STARLING_*` variables, less [`NOT_CONFIG`].
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_vars(std::env::vars_os())
    }

    /// The `STARLING_*` variables among `vars`, less [`NOT_CONFIG`].
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, EnvError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let mut picked = BTreeMap::new();
        for (name, value) in vars {
            // A name that is not UTF-8 cannot start with the prefix as text; skip it.
            let Ok(name) = name.into().into_string() else {
                continue;
            };
            if !name.starts_with(PREFIX) || NOT_CONFIG.contains(&name.as_str()) {
                continue;
            }
            let value = value
                .into()
                .into_string()
                .map_err(|_| EnvError::NotUnicode { var: name.clone() })?;
            picked.insert(name, value);
        }
        Ok(Self {
            vars: picked.into_iter().collect(),
        })
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The variables, sorted by name.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// One override as applied: the variable and the key it set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The variable.
    pub var: String,
    /// The key, as in error messages (`listener[0].bind`).
    pub key: String,
}

/// Deserializes `T` from TOML text; the error names the key.
pub fn from_text<T: DeserializeOwned>(text: &str) -> Result<T, KeyedError> {
    let de = toml::Deserializer::parse(text).map_err(|e| KeyedError {
        key: None,
        message: e.to_string().trim_end().to_owned(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| keyed(&e, e.inner().to_string()))
}

/// Deserializes `T` from a TOML tree; the error names the key.
pub fn from_tree<T: DeserializeOwned>(tree: &Table) -> Result<T, KeyedError> {
    serde_path_to_error::deserialize(Value::Table(tree.clone()))
        .map_err(|e| keyed(&e, e.inner().message().to_owned()))
}

fn keyed<E>(e: &serde_path_to_error::Error<E>, message: String) -> KeyedError {
    let key = e.path().to_string();
    KeyedError {
        key: (key != ".").then_some(key),
        message: message.trim_end().to_owned(),
    }
}

/// Applies `overrides` to `tree` (a parsed config file; `defaults` is the serialized default
/// config) and deserializes the result. Returns it with the keys each variable set.
pub fn apply<T: DeserializeOwned>(
    tree: &Table,
    defaults: &Table,
    overrides: &Overrides,
) -> Result<(T, Vec<Applied>), EnvError> {
    // Variables whose TOML reading was refused and that are retried as strings.
    let mut as_string = vec![false; overrides.vars.len()];
    loop {
        let mut changed = tree.clone();
        let mut applied = Vec::with_capacity(overrides.vars.len());
        // Per variable: whether the value set was a TOML reading rather than the raw string.
        let mut typed = Vec::with_capacity(overrides.vars.len());
        for ((var, raw), force_string) in overrides.vars.iter().zip(&as_string) {
            let tokens = tokens(var)?;
            let mut set = Setter {
                var,
                raw,
                force_string: *force_string,
                typed: false,
            };
            let key = set.table(&mut changed, Some(defaults), &tokens, String::new())?;
            typed.push(set.typed);
            applied.push(Applied {
                var: var.clone(),
                key,
            });
        }
        let error = match from_tree::<T>(&changed) {
            Ok(config) => return Ok((config, applied)),
            Err(e) => e,
        };
        // The root (`None`): an unknown top-level key.
        let key = error.key.clone().unwrap_or_default();
        // A TOML reading refused at exactly the key it set: retry that one as a string.
        if let Some(i) = applied
            .iter()
            .zip(&typed)
            .position(|(a, &t)| t && a.key == key)
            && let Some(flag) = as_string.get_mut(i)
            && !*flag
        {
            *flag = true;
            continue;
        }
        return Err(blame(&applied, error));
    }
}

/// The error, tied to the variable it is about when one can be found: the one that set the
/// key, else one that set a key inside it and is quoted by the message (an unknown key, a
/// missing one), else the only one inside it.
fn blame(applied: &[Applied], error: KeyedError) -> EnvError {
    let key = error.key.clone().unwrap_or_default();
    let exact = applied.iter().find(|a| a.key == key);
    let inside: Vec<&Applied> = applied
        .iter()
        .filter(|a| {
            key.is_empty()
                || a.key
                    .strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
        .collect();
    let quoted = inside.iter().copied().find(|a| {
        let leaf = a.key.rsplit(['.', ']']).next().unwrap_or_default();
        // "unknown field `leaf`": not a mere mention in a list of expected keys.
        !leaf.is_empty() && error.message.contains(&format!("field `{leaf}`"))
    });
    let only = match inside.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    match exact.or(quoted).or(only) {
        Some(a) => EnvError::Invalid {
            var: a.var.clone(),
            key: a.key.clone(),
            message: error.message,
        },
        None => combined(applied, error),
    }
}

fn combined(applied: &[Applied], error: KeyedError) -> EnvError {
    EnvError::Combined {
        vars: applied
            .iter()
            .map(|a| a.var.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        error,
    }
}

/// The parts of the name after the prefix, as written (upper case).
fn tokens(var: &str) -> Result<Vec<&str>, EnvError> {
    let rest = var.strip_prefix(PREFIX).unwrap_or(var);
    let tokens: Vec<&str> = rest.split('_').collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return Err(EnvError::Name {
            var: var.to_owned(),
            reason: "names no config key (empty part between underscores)".into(),
        });
    }
    Ok(tokens)
}

/// The value of an override: its TOML reading when it has exactly one, else the string.
fn toml_reading(raw: &str) -> Option<Value> {
    let table: Table = format!("v = {raw}").parse().ok()?;
    if table.len() != 1 {
        return None;
    }
    table.get("v").cloned()
}

/// Sets one variable's value at the key its name resolves to.
struct Setter<'a> {
    var: &'a str,
    raw: &'a str,
    /// Use the raw string even if it reads as another TOML value.
    force_string: bool,
    /// Set: the value set was a TOML reading other than a string.
    typed: bool,
}

impl Setter<'_> {
    fn name_error(&self, reason: String) -> EnvError {
        EnvError::Name {
            var: self.var.to_owned(),
            reason,
        }
    }

    /// The value to set where `known` (the file's or the default's value) is.
    fn value(&mut self, known: Option<&Value>) -> Value {
        let wants_string = matches!(known, Some(Value::String(_)));
        if self.force_string || wants_string {
            return Value::String(self.raw.to_owned());
        }
        match toml_reading(self.raw) {
            Some(Value::String(s)) => Value::String(s),
            Some(v) => {
                self.typed = true;
                v
            }
            None => Value::String(self.raw.to_owned()),
        }
    }

    /// Resolves `tokens` in `table` (`schema`: the defaults' table at the same place), sets
    /// the value and returns the key path.
    fn table(
        &mut self,
        table: &mut Table,
        schema: Option<&Table>,
        tokens: &[&str],
        path: String,
    ) -> Result<String, EnvError> {
        for n in (1..=tokens.len()).rev() {
            let (head, rest) = tokens.split_at(n);
            let key = head.join("_").to_ascii_lowercase();
            let known_schema = schema.and_then(|s| s.get(&key));
            let Some(known) = table.get(&key).or(known_schema) else {
                continue;
            };
            let here = join(&path, &key);
            if rest.is_empty() {
                let value = self.value(Some(known));
                table.insert(key, value);
                return Ok(here);
            }
            match known {
                Value::Table(_) => {
                    let sub_schema = match known_schema {
                        Some(Value::Table(t)) => Some(t.clone()),
                        _ => None,
                    };
                    let entry = table
                        .entry(key.clone())
                        .or_insert_with(|| Value::Table(sub_schema.clone().unwrap_or_default()));
                    let Value::Table(sub) = entry else {
                        continue;
                    };
                    return self.table(sub, sub_schema.as_ref(), rest, here);
                }
                Value::Array(_) => {
                    let element_schema = match known_schema {
                        Some(Value::Array(a)) => a.first().cloned(),
                        _ => None,
                    };
                    let default = match known_schema {
                        Some(v @ Value::Array(_)) => v.clone(),
                        _ => Value::Array(Vec::new()),
                    };
                    let entry = table.entry(key.clone()).or_insert(default);
                    let Value::Array(array) = entry else {
                        continue;
                    };
                    return self.array(array, element_schema.as_ref(), rest, here);
                }
                // A scalar with parts left: a shorter key may still be a table.
                _ => continue,
            }
        }
        // No known key: the whole rest is the key (the config refuses it if it is unknown).
        let key = tokens.join("_").to_ascii_lowercase();
        let here = join(&path, &key);
        let value = self.value(None);
        table.insert(key, value);
        Ok(here)
    }

    /// Resolves `tokens` (an index first) in `array`.
    fn array(
        &mut self,
        array: &mut Vec<Value>,
        element_schema: Option<&Value>,
        tokens: &[&str],
        path: String,
    ) -> Result<String, EnvError> {
        let Some((first, rest)) = tokens.split_first() else {
            return Err(self.name_error(format!("{path} is an array: name an element")));
        };
        let index: usize = first.parse().map_err(|_| {
            self.name_error(format!(
                "{path} is an array: expected an element number, got {first:?}"
            ))
        })?;
        let len = array.len();
        if index > len {
            return Err(self.name_error(format!(
                "{path} has {len} element(s): the next one is {len}, got {index}"
            )));
        }
        let here = format!("{path}[{index}]");
        if rest.is_empty() {
            let value = self.value(array.get(index).or(element_schema));
            match array.get_mut(index) {
                Some(slot) => *slot = value,
                None => array.push(value),
            }
            return Ok(here);
        }
        if index == len {
            array.push(Value::Table(Table::new()));
        }
        let schema = match element_schema {
            Some(Value::Table(t)) => Some(t),
            _ => None,
        };
        match array.get_mut(index) {
            Some(Value::Table(element)) => self.table(element, schema, rest, here),
            _ => Err(self.name_error(format!("{here} is not a table"))),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Arguments of `starling check-config`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Check a config file (with the STARLING_* environment overrides) without starting",
    after_help = "Exit status 0 and `FILE: OK` when the broker would start with it; otherwise \
                  1 and a message naming the key (and the variable, for an override)."
)]
pub struct CheckConfigArgs {
    /// The config file.
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
}

/// Runs `starling check-config`: the file is parsed and validated as `starling serve` would,
/// with the environment overrides, and the files it names (password files, ACL files,
/// certificates and keys) are loaded. Prints `FILE: OK` on success.
pub fn check_config(args: &CheckConfigArgs) -> anyhow::Result<()> {
    let overrides = Overrides::from_env()?;
    let config = super::Config::load_with_env(Some(&args.file), &overrides)?;
    // The plugins (nothing written) and the `[auth]` backends are loaded (key files read)
    // without starting their tasks.
    crate::plugin::Plugins::build(&config.plugins, None)
        .and_then(|p| {
            let mut b = crate::authn::Backends::build(&config, None)?;
            b.add_plugins(&p);
            Ok(b)
        })
        .and_then(|b| crate::listener::Listeners::load(&config, &b, &Default::default()))
        .map_err(|e| e.context(format!("config file {}", args.file.display())))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}: OK", args.file.display())?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
