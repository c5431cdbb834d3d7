//! Policy errors: where (file, line, column), what is wrong, and how to fix it.

use std::fmt;

use super::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The directory or a file could not be read.
    Io,
    /// Not valid YAML or JSON.
    Syntax,
    UnknownKey,
    MissingKey,
    WrongType,
    InvalidValue,
    /// Two things claim the same name, base URL or route.
    Conflict,
    /// A key file is missing, unreadable or holds unusable keys.
    KeyFile,
}

/// One problem in a policy set. `pos` is `None` for problems with a whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub pos: Option<Pos>,
    pub kind: ErrorKind,
    pub message: String,
    pub help: Option<String>,
}

impl PolicyError {
    /// A file or directory that cannot be read: no position, no help.
    pub fn io(path: &std::path::Path, message: impl Into<String>) -> Self {
        Self {
            file: path.display().to_string(),
            pos: None,
            kind: ErrorKind::Io,
            message: message.into(),
            help: None,
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(pos) => write!(
                f,
                "{}:{}:{}: {}",
                self.file, pos.line, pos.column, self.message
            )?,
            None => write!(f, "{}: {}", self.file, self.message)?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in a policy set; a set with any problem is refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Collects errors for one file while it is decoded.
pub(crate) struct Errors<'a> {
    pub file: &'a str,
    pub list: &'a mut Vec<PolicyError>,
}

impl Errors<'_> {
    pub fn push(
        &mut self,
        pos: Pos,
        kind: ErrorKind,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let help = help.into();
        self.list.push(PolicyError {
            file: self.file.to_owned(),
            pos: Some(pos),
            kind,
            message: message.into(),
            help: (!help.is_empty()).then_some(help),
        });
    }
}

/// The closest candidate to `word`, for "did you mean" hints on typos.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| {
            (
                edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_key() {
        let keys = ["rules", "methods", "paths", "name"];
        assert_eq!(closest("rulez", &keys), Some("rules"));
        assert_eq!(closest("Methods", &keys), Some("methods"));
        assert_eq!(closest("xyzzy", &keys), None);
    }
}
