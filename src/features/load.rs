//! Reading one feature: a built-in text, a `NAME.yaml` file, or a `NAME/`
//! directory (`feature.yaml`, optionally `script.sh` and `files/`), each
//! read bounded, parsed, checked against the merge rules and the
//! cloud-config guard, and folded into one cloud-config value.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::{Feature, Origin};
use crate::config::error::ConfigError;

/// A feature's snippet (`NAME.yaml`, `feature.yaml`).
pub const SNIPPET_MAX: u64 = 256 << 10;
/// A feature's `script.sh`.
pub const SCRIPT_MAX: u64 = 256 << 10;
/// All of a feature's `files/` together (each file too).
pub const FILES_MAX: u64 = 512 << 10;
/// How many files `files/` may hold.
pub const FILES_COUNT_MAX: usize = 64;
/// How deep `files/` may nest.
const FILES_DEPTH_MAX: usize = 8;
/// Where `files/` goes in the guest unless `# files: PATH` says otherwise.
pub const FILES_DEFAULT_ROOT: &str = "/opt/project-vm/features";
/// Where a feature's script is written in the guest.
pub use crate::cloudinit::FEATURE_SCRIPT_DIR as SCRIPT_DIR;

/// Keys whose values are lists in every built-in: lists append when
/// features merge, so a feature must give a list there too (a scalar would
/// replace what every earlier feature put in).
const LIST_KEYS: &[&str] = &["packages", "runcmd", "bootcmd", "write_files", "mounts", "users"];
/// Keys whose values are mappings in cloud-config: they merge key by key.
const MAP_KEYS: &[&str] = &["apt", "growpart", "ntp", "power_state", "ca_certs", "swap", "chpasswd"];

/// A feature name: what `NAME.yaml` and `NAME/` may be called.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The comment lines at the top of a snippet (after `#cloud-config`).
#[derive(Debug, Default)]
struct Header {
    description: Option<String>,
    first_comment: Option<String>,
    requires: Vec<String>,
    files: Option<String>,
}

fn header(text: &str) -> Header {
    let mut h = Header::default();
    for line in text.lines().skip(1).map_while(|l| l.trim_start().strip_prefix('#')) {
        let line = line.trim();
        if let Some(d) = line.strip_prefix("description:") {
            h.description = Some(d.trim().to_owned());
        } else if let Some(r) = line.strip_prefix("requires:") {
            h.requires.extend(r.split([',', ' ']).filter(|s| !s.is_empty()).map(String::from));
        } else if let Some(f) = line.strip_prefix("files:") {
            h.files = Some(f.trim().to_owned());
        } else if h.first_comment.is_none() && !line.is_empty() {
            h.first_comment = Some(line.to_owned());
        }
    }
    h
}

/// Parses a snippet's text: `#cloud-config`, YAML, a mapping, the merge rules.
pub fn snippet(text: &str, file: &str) -> Result<Value, ConfigError> {
    if text.lines().next().map(str::trim_end) != Some("#cloud-config") {
        return Err(ConfigError::FeatureYaml {
            file: file.to_owned(),
            why: "its first line must be \"#cloud-config\"".into(),
        });
    }
    let value: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::FeatureYaml { file: file.to_owned(), why: format!("not valid YAML: {e}") })?;
    let value = match value {
        Value::Object(_) => value,
        Value::Null => Value::Object(Map::new()),
        _ => {
            return Err(ConfigError::FeatureYaml {
                file: file.to_owned(),
                why: "a cloud-config must be a mapping of module keys".into(),
            })
        }
    };
    merge_rules(&value, file)?;
    Ok(value)
}

/// The merge rules the built-ins follow: list keys are lists, mapping keys mappings.
fn merge_rules(v: &Value, file: &str) -> Result<(), ConfigError> {
    let bad = |key: &str, want: &str| {
        ConfigError::FeatureKey {
        file: file.to_owned(),
        key: key.to_owned(),
        why: format!("must be a {want}: features merge {want}s (a {want} from each, in order), and anything else would replace what earlier features set"),
    }
    };
    for (key, value) in v.as_object().into_iter().flatten() {
        if LIST_KEYS.contains(&key.as_str()) && !value.is_array() {
            return Err(bad(key, "list"));
        }
        if MAP_KEYS.contains(&key.as_str()) && !value.is_object() {
            return Err(bad(key, "mapping"));
        }
    }
    Ok(())
}

/// The cloud-config guard, its refusal kept as the config layer's variant.
fn guard(v: &Value, file: &str) -> Result<(), ConfigError> {
    crate::cloudinit::guard(v, file).map_err(|e| match e.downcast::<ConfigError>() {
        Ok(c) => c,
        Err(e) => ConfigError::FeatureInvalid { file: file.to_owned(), why: e.to_string() },
    })
}

/// A built-in feature from its shipped text.
pub fn built_in(name: &str, text: &str) -> Result<Feature, ConfigError> {
    let file = format!("built-in feature {name}");
    let config = snippet(text, &file)?;
    guard(&config, &file)?;
    Ok(feature(name, Origin::BuiltIn, header(text), config, false, 0))
}

fn feature(name: &str, origin: Origin, h: Header, config: Value, script: bool, files: usize) -> Feature {
    Feature {
        name: name.to_owned(),
        origin,
        description: h.description.or(h.first_comment).unwrap_or_default(),
        requires: h.requires,
        config,
        script,
        files,
    }
}

/// Reads `path` whole, refusing it above `max` bytes (`what`: its role).
fn read(path: &Path, what: &'static str, max: u64) -> Result<String, ConfigError> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|e| ConfigError::FeatureInvalid { file: shown.clone(), why: format!("cannot read it: {e}") })?
        .len();
    if size > max {
        return Err(ConfigError::FeatureTooLarge { file: shown, what, size, limit: crate::output::human(max) });
    }
    crate::files::read_text(path, what, max).map_err(|e| match e.downcast::<ConfigError>() {
        Ok(c) => c,
        Err(e) => ConfigError::FeatureInvalid { file: shown, why: e.to_string() },
    })
}

/// A `NAME.yaml` file of a features directory.
pub fn from_file(name: &str, path: &Path) -> Result<Feature, ConfigError> {
    let file = path.display().to_string();
    let text = read(path, "snippet", SNIPPET_MAX)?;
    let config = snippet(&text, &file)?;
    guard(&config, &file)?;
    let h = header(&text);
    if h.files.is_some() {
        return Err(ConfigError::FeatureKey {
            file,
            key: "# files:".into(),
            why: "only a feature directory (NAME/feature.yaml with files/) has files to copy".into(),
        });
    }
    Ok(feature(name, Origin::Path(path.to_owned()), h, config, false, 0))
}

/// A `NAME/` directory: `feature.yaml`, then `files/` and `script.sh` folded in.
pub fn from_dir(name: &str, dir: &Path) -> Result<Feature, ConfigError> {
    let yaml = dir.join("feature.yaml");
    if !yaml.exists() {
        return Err(ConfigError::FeatureIncomplete { dir: dir.display().to_string(), missing: "feature.yaml" });
    }
    let file = yaml.display().to_string();
    let text = read(&yaml, "snippet", SNIPPET_MAX)?;
    let mut config = snippet(&text, &file)?;
    let h = header(&text);
    let files = fold_files(&mut config, name, dir, &file, h.files.as_deref())?;
    let script = fold_script(&mut config, name, &dir.join("script.sh"))?;
    guard(&config, &file)?;
    Ok(feature(name, Origin::Path(dir.to_owned()), h, config, script, files))
}

/// Appends `entry` to the list at `key` (made when missing).
fn push(config: &mut Value, key: &str, entry: Value) {
    let list = config.as_object_mut().expect("a mapping").entry(key).or_insert_with(|| json!([]));
    list.as_array_mut().expect("checked by merge_rules").push(entry);
}

/// `script.sh`, when there is one: written to [`SCRIPT_DIR`] and run after
/// the snippet's own `runcmd` (with its `#!`, else by `sh`).
fn fold_script(config: &mut Value, name: &str, path: &Path) -> Result<bool, ConfigError> {
    if !path.exists() {
        return Ok(false);
    }
    let text = read(path, "script", SCRIPT_MAX)?;
    let at = format!("{SCRIPT_DIR}/{name}");
    let run = if text.starts_with("#!") { json!([at]) } else { json!(["sh", at]) };
    push(config, "write_files", json!({ "path": at, "permissions": "0755", "content": text }));
    push(config, "runcmd", run);
    Ok(true)
}

/// `files/`, when there is one: every regular file under it, written under
/// the `# files:` directory (default [`FILES_DEFAULT_ROOT`]/NAME) with its
/// mode (0755 when executable, else 0644).
fn fold_files(
    config: &mut Value,
    name: &str,
    dir: &Path,
    file: &str,
    root: Option<&str>,
) -> Result<usize, ConfigError> {
    let from = dir.join("files");
    if !from.is_dir() {
        return Ok(0);
    }
    let root = root.map(String::from).unwrap_or_else(|| format!("{FILES_DEFAULT_ROOT}/{name}"));
    if !root.starts_with('/') || root.split('/').any(|c| c == "..") {
        return Err(ConfigError::FeatureKey {
            file: file.to_owned(),
            key: "# files:".into(),
            why: format!("{root:?} is not an absolute path in the guest (e.g. \"/opt/{name}\")"),
        });
    }
    let mut found = Vec::new();
    walk(&from, PathBuf::new(), 0, &mut found)?;
    let mut total = 0u64;
    for (rel, path) in &found {
        let bytes = read_bytes(path, FILES_MAX)?;
        total += bytes.len() as u64;
        if total > FILES_MAX {
            return Err(too_large(&from, total));
        }
        let mode = if executable(path) { "0755" } else { "0644" };
        let at = format!("{}/{}", root.trim_end_matches('/'), rel.display());
        push(
            config,
            "write_files",
            json!({ "path": at, "permissions": mode, "encoding": "b64", "content": base64(&bytes) }),
        );
    }
    Ok(found.len())
}

fn too_large(files: &Path, size: u64) -> ConfigError {
    ConfigError::FeatureTooLarge {
        file: files.display().to_string(),
        what: "files (all together)",
        size,
        limit: crate::output::human(FILES_MAX),
    }
}

/// The regular files under `dir` (sorted), each as (path under files/, path).
fn walk(dir: &Path, rel: PathBuf, depth: usize, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<(), ConfigError> {
    let invalid = |why: String| ConfigError::FeatureInvalid { file: dir.display().to_string(), why };
    if depth > FILES_DEPTH_MAX {
        return Err(invalid(format!("files/ nests deeper than {FILES_DEPTH_MAX} directories")));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| invalid(format!("cannot read it: {e}")))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = PathBuf::from(path.file_name().expect("an entry's name"));
        // Not followed: a link (or a device, a FIFO) could hand the guest
        // any file of the host, which is not what a feature's files/ is.
        let kind = std::fs::symlink_metadata(&path).map_err(|e| invalid(format!("cannot read it: {e}")))?.file_type();
        if kind.is_dir() {
            walk(&path, rel.join(&name), depth + 1, out)?;
        } else if kind.is_file() {
            out.push((rel.join(&name), path));
        } else {
            let what = if kind.is_symlink() { "a symbolic link" } else { "not a regular file" };
            return Err(invalid(format!(
                "{} is {what}: files/ holds only regular files and directories (copy the file in instead)",
                path.display()
            )));
        }
        if out.len() > FILES_COUNT_MAX {
            return Err(invalid(format!("files/ holds more than {FILES_COUNT_MAX} files")));
        }
    }
    Ok(())
}

fn read_bytes(path: &Path, max: u64) -> Result<Vec<u8>, ConfigError> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > max {
        return Err(ConfigError::FeatureTooLarge { file: shown, what: "file", size, limit: crate::output::human(max) });
    }
    crate::files::read_bounded(path, "feature file", max).map_err(|e| match e.downcast::<ConfigError>() {
        Ok(c) => c,
        Err(e) => ConfigError::FeatureInvalid { file: shown, why: e.to_string() },
    })
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Standard base64 with padding (cloud-init's `encoding: b64`).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            let c = if i <= chunk.len() { ABC[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' };
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_standard() {
        for (raw, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("hello\n", "aGVsbG8K")]
        {
            assert_eq!(base64(raw.as_bytes()), enc, "{raw:?}");
        }
    }

    #[test]
    fn the_header_names_description_requirements_and_files() {
        let h = header("#cloud-config\n# Some words.\n# description: GPU containers\n# requires: docker, nvidia\n# files: /opt/x\npackages: []\n# not header\n");
        assert_eq!(h.description.as_deref(), Some("GPU containers"));
        assert_eq!(h.first_comment.as_deref(), Some("Some words."));
        assert_eq!(h.requires, vec!["docker", "nvidia"]);
        assert_eq!(h.files.as_deref(), Some("/opt/x"));
    }

    #[test]
    fn names_are_lowercase_words() {
        assert!(valid_name("docker-gpu") && valid_name("a_1") && valid_name("9x"));
        assert!(
            !valid_name("") && !valid_name("Docker") && !valid_name("-x") && !valid_name("a/b") && !valid_name("a.b")
        );
    }
}
