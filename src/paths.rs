//! The XDG base directories (per the XDG Base Directory specification) in
//! one place: a variable counts only when it holds an absolute path (the
//! specification says to ignore a relative one), and the fallbacks under
//! the home directory are the specification's.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// An absolute path from `value`, else `None` (unset, empty, relative).
fn absolute(value: Option<OsString>) -> Option<PathBuf> {
    value.map(PathBuf::from).filter(|p| p.is_absolute())
}

/// `var`'s value when it is an absolute path.
pub fn var(var: &str) -> Option<PathBuf> {
    absolute(std::env::var_os(var))
}

/// `$HOME`, when it is an absolute path.
pub fn home() -> Option<PathBuf> {
    var("HOME")
}

/// `$XDG_STATE_HOME`, else `HOME/.local/state` for the given home.
pub fn state_home_in(home: Option<&Path>) -> Option<PathBuf> {
    var("XDG_STATE_HOME").or_else(|| Some(home?.join(".local/state")))
}

/// `$XDG_STATE_HOME`, else `$HOME/.local/state`.
pub fn state_home() -> Option<PathBuf> {
    state_home_in(home().as_deref())
}

/// `$XDG_CONFIG_HOME`, else `$HOME/.config`.
pub fn config_home() -> Option<PathBuf> {
    var("XDG_CONFIG_HOME").or_else(|| Some(home()?.join(".config")))
}

/// `$XDG_RUNTIME_DIR` (no fallback: the specification leaves it to the caller).
pub fn runtime_dir() -> Option<PathBuf> {
    var("XDG_RUNTIME_DIR")
}

#[cfg(test)]
mod tests {
    use super::absolute;

    #[test]
    fn only_absolute_paths_count() {
        assert_eq!(absolute(Some("/a/b".into())), Some("/a/b".into()));
        assert_eq!(absolute(Some("rel/b".into())), None);
        assert_eq!(absolute(Some("".into())), None);
        assert_eq!(absolute(None), None);
    }

    #[test]
    fn state_home_falls_back_to_the_given_home() {
        // Only when XDG_STATE_HOME is not an absolute path in this process.
        if super::var("XDG_STATE_HOME").is_none() {
            assert_eq!(super::state_home_in(Some("/h".as_ref())), Some("/h/.local/state".into()));
            assert_eq!(super::state_home_in(None), None);
        }
    }
}
