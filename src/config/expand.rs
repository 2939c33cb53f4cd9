//! `${VAR}` / `${VAR:-default}` expansion and `*_file` secrets, over an [`Env`] lookup.
//!
//! Expansion runs on each parsed scalar value (never on the raw file text, and never on
//! keys), so a variable's value cannot inject YAML. Values read from the environment or from
//! a file are used as they are: they are not expanded again.

use std::io;
use std::path::{Path, PathBuf};

/// Where `${VAR}` values come from. Tests pass a map; `gcpool` passes [`ProcessEnv`].
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Why a value could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExpandError {
    /// `${NAME}` without a default, and `NAME` is not set.
    Unset(String),
    /// A malformed `${…}`; the message says how.
    Malformed(String),
}

impl ExpandError {
    /// The message for the key being expanded. For a credential (`credential`), an unset
    /// variable is to be exported: a default would put a credential in the config file.
    pub(super) fn message(&self, credential: bool) -> String {
        match self {
            Self::Unset(name) if credential => format!(
                "environment variable {name} is not set: export {name}=… where gcpool runs \
                 (a credential has no default)"
            ),
            Self::Unset(name) => format!(
                "environment variable {name} is not set: export {name}=… where gcpool runs, \
                 or write ${{{name}:-default}} to give a default"
            ),
            Self::Malformed(message) => message.clone(),
        }
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in `text`.
///
/// - `${VAR}`: the variable's value (empty if it is set but empty); an error if it is unset.
/// - `${VAR:-default}`: the default when the variable is unset or empty (as in the shell).
/// - `$$` is a literal `$`; a `$` not followed by `{` or `$` is kept as it is.
///
/// # Errors
/// A message naming the variable that is not set, or the malformed `${…}`.
pub(super) fn expand(text: &str, env: &dyn Env) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let Some(end) = body_and_tail.find('}') else {
                return Err(ExpandError::Malformed(
                    "unterminated `${`: expected `${VAR}` or `${VAR:-default}`".into(),
                ));
            };
            out.push_str(&substitute(&body_and_tail[..end], env)?);
            rest = &body_and_tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value for the inside of one `${…}`.
fn substitute(body: &str, env: &dyn Env) -> Result<String, ExpandError> {
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    if !is_var_name(name) {
        return Err(ExpandError::Malformed(format!(
            "`${{{body}}}` is not a valid variable reference: a name is letters, digits and `_`, not starting with a digit"
        )));
    }
    match (env.var(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_owned()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err(ExpandError::Unset(name.to_owned())),
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Resolves a `*_file` path: relative paths are relative to the config file's directory.
pub(super) fn resolve_path(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// Reads a secret from a file (a Kubernetes secret mount, …), without trailing whitespace
/// (`echo secret > file` adds a newline).
///
/// # Errors
/// A message naming the file and what went wrong; it never contains the file's contents.
pub(super) fn read_secret_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => format!("file {shown} does not exist"),
        io::ErrorKind::PermissionDenied => {
            format!("file {shown} cannot be read: permission denied")
        }
        _ => format!(
            "file {shown} cannot be read: {}",
            lower_first(&err.to_string())
        ),
    })?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("file {shown} is not valid UTF-8 text"))?;
    let value = text.trim_end();
    if value.is_empty() {
        return Err(format!("file {shown} is empty"));
    }
    Ok(value.to_owned())
}

/// OS error messages start with a capital letter; ours do not.
pub(super) fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn expands_variables_and_defaults() {
        let e = env(&[("A", "alpha"), ("EMPTY", "")]);
        assert_eq!(expand("${A}", &e).unwrap(), "alpha");
        assert_eq!(expand("x-${A}-y", &e).unwrap(), "x-alpha-y");
        assert_eq!(expand("${B:-beta}", &e).unwrap(), "beta");
        assert_eq!(expand("${A:-beta}", &e).unwrap(), "alpha");
        assert_eq!(
            expand("${EMPTY:-d}", &e).unwrap(),
            "d",
            "empty counts as unset with :-"
        );
        assert_eq!(expand("${EMPTY}", &e).unwrap(), "");
        assert_eq!(expand("${B:-}", &e).unwrap(), "");
        assert_eq!(expand("${B:-a:-b}", &e).unwrap(), "a:-b");
        assert_eq!(expand("${A}${A}", &e).unwrap(), "alphaalpha");
        assert_eq!(expand("no vars", &e).unwrap(), "no vars");
    }

    #[test]
    fn dollar_escapes_and_lone_dollars() {
        let e = env(&[("A", "alpha")]);
        assert_eq!(expand("$${A}", &e).unwrap(), "${A}");
        assert_eq!(expand("pa$$word", &e).unwrap(), "pa$word");
        assert_eq!(expand("pa$word", &e).unwrap(), "pa$word");
        assert_eq!(expand("end$", &e).unwrap(), "end$");
    }

    #[test]
    fn values_are_not_expanded_twice() {
        let e = env(&[("A", "${B}"), ("B", "no")]);
        assert_eq!(expand("${A}", &e).unwrap(), "${B}");
    }

    #[test]
    fn missing_variable_is_named() {
        let err = expand("id-${GC_CLIENT_04_SECRET}", &env(&[])).unwrap_err();
        assert_eq!(err, ExpandError::Unset("GC_CLIENT_04_SECRET".into()));
        let secret = err.message(true);
        assert!(
            secret.contains("GC_CLIENT_04_SECRET is not set"),
            "{secret}"
        );
        assert!(secret.contains("export GC_CLIENT_04_SECRET="), "{secret}");
        assert!(
            !secret.contains(":-"),
            "no default for a credential: {secret}"
        );
        let other = err.message(false);
        assert!(other.contains("${GC_CLIENT_04_SECRET:-default}"), "{other}");
    }

    #[test]
    fn malformed_references_are_errors() {
        let e = env(&[]);
        let msg = |text: &str| expand(text, &e).unwrap_err().message(false);
        assert!(msg("${A").contains("unterminated"));
        assert!(msg("${}").contains("not a valid variable"));
        assert!(msg("${1A}").contains("not a valid variable"));
        assert!(msg("${A B}").contains("not a valid variable"));
    }

    #[test]
    fn secret_file_is_trimmed_and_errors_never_show_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "hunter2\n").unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), "hunter2");

        std::fs::write(&path, "\n  \n").unwrap();
        let err = read_secret_file(&path).unwrap_err();
        assert!(err.contains("is empty"), "{err}");

        std::fs::write(&path, [0xff, 0xfe, b'x']).unwrap();
        let err = read_secret_file(&path).unwrap_err();
        assert!(err.contains("not valid UTF-8"), "{err}");

        let missing = dir.path().join("nope");
        let err = read_secret_file(&missing).unwrap_err();
        assert!(
            err.contains("does not exist") && err.contains("nope"),
            "{err}"
        );

        let err = read_secret_file(dir.path()).unwrap_err();
        assert!(err.contains("cannot be read"), "{err}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_dir() {
        let base = Path::new("/etc/gcpool");
        assert_eq!(resolve_path(base, "s/x"), Path::new("/etc/gcpool/s/x"));
        assert_eq!(
            resolve_path(base, "/run/secrets/x"),
            Path::new("/run/secrets/x")
        );
    }
}
