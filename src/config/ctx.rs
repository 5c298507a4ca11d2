//! What validating one configuration file carries along: the file and its
//! text (to place each error at `file:line:column`), the directory relative
//! paths start from, and the warnings found so far.

use std::path::{Path, PathBuf};

use super::{ConfigError, Field};

/// The context every validation step gets.
pub(super) struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    base: &'a Path,
    pub(super) warnings: Vec<String>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(file: &'a Path, text: &'a str, base: &'a Path) -> Self {
        Ctx {
            file,
            text,
            base,
            warnings: Vec::new(),
        }
    }

    /// An error about `field`, placed where the field is written.
    pub(super) fn err(&self, field: impl Into<Field>, message: impl Into<String>) -> ConfigError {
        ConfigError::new(field, message).at(self.file, self.text)
    }

    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Resolve a path and make sure it names a readable file.
    pub(super) fn existing_file(&self, field: impl Into<Field>, p: &Path) -> Result<PathBuf, ConfigError> {
        let field = field.into();
        let path = self.resolve(p);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(self.err(&field, format!("{} is not a file", path.display()))),
            Err(e) => Err(self.err(field, format!("cannot read {}: {e}", path.display()))),
        }
    }
}
