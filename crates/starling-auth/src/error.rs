//! Errors of the auth crate.

use std::path::PathBuf;

/// A line of a password or ACL file that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

/// Loading, reloading or changing a password or ACL file failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is malformed; the error names the line.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Which line, and why.
        source: ParseError,
    },
    /// The password file has no users: it would refuse everyone, which is never what was
    /// meant.
    #[error("{}: the password file has no users", path.display())]
    EmptyPasswordFile {
        /// The file.
        path: PathBuf,
    },
    /// The user to delete or check is not in the file.
    #[error("user {0:?} is not in the password file")]
    UnknownUser(String),
    /// The username cannot be stored in a password file.
    #[error("invalid username {0:?}: it must be non-empty and contain no ':' or line break")]
    InvalidUsername(String),
    /// Hashing a new password failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}
