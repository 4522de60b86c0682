//! Reading a mosquitto.conf as mosquitto does: one directive per line (`name value`), `#`
//! comments, and `include_dir` in the main file only, whose `*.conf` files are read in
//! mosquitto's order (alphabetical, an upper-case letter before its lower case).

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ImportError;

/// Where a directive is: file and line (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The file.
    pub file: Arc<Path>,
    /// The line, from 1.
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the config as a whole.
        match self.line {
            0 => write!(f, "{}", self.file.display()),
            line => write!(f, "{}:{line}", self.file.display()),
        }
    }
}

/// One directive.
#[derive(Debug, Clone)]
pub struct Directive {
    /// Where it is.
    pub loc: Loc,
    /// Its name (`listener`, `password_file`, ...).
    pub name: String,
    /// The rest of the line, trimmed.
    pub value: String,
}

impl Directive {
    /// `name value`, as written.
    pub fn text(&self) -> String {
        if self.value.is_empty() {
            self.name.clone()
        } else {
            format!("{} {}", self.name, self.value)
        }
    }
}

/// What reading yields, in order.
#[derive(Debug, Clone)]
pub enum Item {
    /// A directive.
    Directive(Directive),
    /// The start of an included file: mosquitto reads each file with a fresh current listener
    /// (the default one) and bridge.
    Enter,
    /// The end of an included file: back to the includer's current listener and bridge.
    Leave,
}

/// Reads `path` and every file its `include_dir` directives name.
pub fn read(path: &Path) -> Result<Vec<Item>, ImportError> {
    let mut items = Vec::new();
    read_file(path, 0, &mut items)?;
    Ok(items)
}

/// Parses the text of one file; `include_dir` is returned as a directive (the caller
/// decides what to do with it).
pub fn parse(file: &Path, text: &str) -> Vec<Directive> {
    let file: Arc<Path> = Arc::from(file);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches(['\r', '\n']);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (name, value) = match trimmed.split_once([' ', '\t']) {
            Some((name, value)) => (name, value.trim()),
            None => (trimmed, ""),
        };
        out.push(Directive {
            loc: Loc {
                file: file.clone(),
                line: i + 1,
            },
            name: name.to_owned(),
            value: value.to_owned(),
        });
    }
    out
}

fn read_file(path: &Path, level: usize, items: &mut Vec<Item>) -> Result<(), ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    for d in parse(path, &text) {
        if d.name == "include_dir" && level == 0 {
            let dir = include_path(path, &d.value);
            for file in conf_files(&dir)? {
                items.push(Item::Enter);
                read_file(&file, level + 1, items)?;
                items.push(Item::Leave);
            }
        } else {
            items.push(Item::Directive(d));
        }
    }
    Ok(())
}

/// An `include_dir` path: as written (mosquitto resolves it against its working directory),
/// or, when that does not exist and it is relative, against the including file's directory.
fn include_path(config: &Path, dir: &str) -> PathBuf {
    let as_written = PathBuf::from(dir);
    if as_written.is_absolute() || as_written.is_dir() {
        return as_written;
    }
    match config.parent() {
        Some(parent) if parent.join(dir).is_dir() => parent.join(dir),
        _ => as_written,
    }
}

/// The `*.conf` files of `dir`, in mosquitto's order.
fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let read_error = |source| ImportError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".conf") && entry.path().is_file() {
            files.push(name.to_owned());
        }
    }
    files.sort_by(|a, b| mosquitto_order(a, b));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Alphabetical, case-insensitive first, and an upper-case letter before the same letter in
/// lower case: `00.conf 01.conf A.conf a.conf B.conf b.conf`.
pub fn mosquitto_order(a: &str, b: &str) -> Ordering {
    let key = |s: &str| {
        s.chars()
            .map(|c| (c.to_ascii_lowercase(), c.is_ascii_lowercase()))
            .collect::<Vec<_>>()
    };
    key(a).cmp(&key(b))
}
