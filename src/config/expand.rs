//! `${VAR}` / `${VAR:-default}` expansion and `*_file` secrets, over an [`Env`] lookup.

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
