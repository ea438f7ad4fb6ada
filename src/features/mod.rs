//! The feature library: named cloud-config snippets merged into a VM's
//! generated cloud-config. The built-ins ship with the binary
//! (cloud-init/features/*.yaml); the user's own are found in the settings'
//! `feature_dirs` (default: `$XDG_CONFIG_HOME/project-vm/features`, then
//! `/etc/project-vm/features`), each a `NAME.yaml` or a `NAME/` directory
//! (see [`load`]).
//!
//! Precedence: a directory listed earlier wins over a later one (so the
//! user's own over the system's); a feature in a directory with a built-in's
//! name is refused ([`ConfigError::FeatureShadowsBuiltIn`]), so `docker`
//! means the same on every host. A feature may require others
//! (`# requires: a, b`): they are merged before it, each once.
//!
//! Every feature is read (bounded), parsed and checked when the library is
//! loaded; a broken one is an error only where it is named (`create
//! --feature`, `"features"`, `feature show`) and is listed with its problem.

pub mod load;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use crate::cloudinit;
use crate::config::error::ConfigError;

pub use load::valid_name;

const BUILT_INS: &[(&str, &str)] = &[
    ("base", include_str!("../../cloud-init/features/base.yaml")),
    ("devtools", include_str!("../../cloud-init/features/devtools.yaml")),
    ("docker", include_str!("../../cloud-init/features/docker.yaml")),
    ("docker-gpu", include_str!("../../cloud-init/features/docker-gpu.yaml")),
    ("nix", include_str!("../../cloud-init/features/nix.yaml")),
    ("nvidia", include_str!("../../cloud-init/features/nvidia.yaml")),
];

/// Where the system's features are.
pub const SYSTEM_DIR: &str = "/etc/project-vm/features";

/// Where a feature comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    /// The `NAME.yaml` file or the `NAME/` directory.
    Path(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built-in"),
            Origin::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One feature, read and checked.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: String,
    pub origin: Origin,
    /// From `# description: ...` (else the first comment line).
    pub description: String,
    /// Features merged before this one (`# requires: a, b`).
    pub requires: Vec<String>,
    /// The snippet, with its script and files folded in.
    pub config: Value,
    pub script: bool,
    pub files: usize,
}

/// One name in the library: the feature, or why it cannot be used.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub origin: Origin,
    pub feature: Result<Feature, ConfigError>,
    /// A later directory's feature of the same name, which this one hides.
    pub shadows: Vec<PathBuf>,
}

/// Every feature: the built-ins, then each directory's in order of precedence.
#[derive(Debug, Clone)]
pub struct Library {
    pub entries: Vec<Entry>,
}

/// The default `feature_dirs`: the user's, then the system's.
pub fn default_dirs() -> Vec<PathBuf> {
    crate::paths::config_home()
        .map(|d| d.join("project-vm/features"))
        .into_iter()
        .chain([PathBuf::from(SYSTEM_DIR)])
        .collect()
}

impl Library {
    /// The built-ins only.
    pub fn built_in() -> Library {
        let entries = BUILT_INS
            .iter()
            .map(|(name, text)| Entry {
                name: (*name).to_owned(),
                origin: Origin::BuiltIn,
                feature: load::built_in(name, text),
                shadows: vec![],
            })
            .collect();
        Library { entries }
    }

    /// The built-ins and every feature in `dirs` (a missing directory has none).
    pub fn load(dirs: &[PathBuf]) -> Library {
        let mut lib = Library::built_in();
        // A directory named twice is read once (its features would shadow themselves).
        let mut seen: Vec<&PathBuf> = Vec::new();
        for dir in dirs {
            if seen.contains(&dir) {
                continue;
            }
            seen.push(dir);
            for (name, path) in dir_entries(dir) {
                lib.add(name, path);
            }
        }
        lib
    }

    fn add(&mut self, name: String, path: PathBuf) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.name == name) {
            if e.origin == Origin::BuiltIn {
                let file = path.display().to_string();
                self.entries.push(Entry {
                    name: name.clone(),
                    origin: Origin::Path(path),
                    feature: Err(ConfigError::FeatureShadowsBuiltIn { name, file }),
                    shadows: vec![],
                });
            } else if matches!(&e.origin, Origin::Path(p) if p.parent() == path.parent()) {
                e.feature = Err(ConfigError::FeatureInvalid {
                    file: path.display().to_string(),
                    why: format!("{name}.yaml and {name}/ are both there: keep one of them"),
                });
            } else {
                e.shadows.push(path);
            }
            return;
        }
        let feature = if !valid_name(&name) {
            Err(ConfigError::FeatureInvalid {
                file: path.display().to_string(),
                why: format!("{name:?} is not a feature name: use lowercase letters, digits, '-' and '_' (at most 64)"),
            })
        } else if path.is_dir() {
            load::from_dir(&name, &path)
        } else {
            load::from_file(&name, &path)
        };
        self.entries.push(Entry { name, origin: Origin::Path(path), feature, shadows: vec![] });
    }

    /// The names that may be asked for, in the library's order.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.entries {
            if !out.contains(&e.name) {
                out.push(e.name.clone());
            }
        }
        out
    }

    /// The feature called `name`, or why not.
    pub fn get(&self, name: &str) -> Result<&Feature, ConfigError> {
        // A refused shadow of a built-in comes after the built-in: it wins here.
        let entry = self.entries.iter().rev().find(|e| e.name == name);
        match entry {
            Some(e) => e.feature.as_ref().map_err(Clone::clone),
            None => Err(ConfigError::UnknownFeature {
                name: name.to_owned(),
                suggestion: crate::suggest::did_you_mean(
                    name,
                    &self.names().iter().map(String::as_str).collect::<Vec<_>>(),
                ),
                known: self.names().join(", "),
            }),
        }
    }

    /// `wanted` with what each requires before it, each once, in order.
    pub fn expand(&self, wanted: &[String]) -> Result<Vec<&Feature>, ConfigError> {
        let mut out: Vec<&Feature> = Vec::new();
        for name in wanted {
            self.visit(name, &mut Vec::new(), &mut out)?;
        }
        Ok(out)
    }

    fn visit<'a>(&'a self, name: &str, path: &mut Vec<String>, out: &mut Vec<&'a Feature>) -> Result<(), ConfigError> {
        if out.iter().any(|f| f.name == name) {
            return Ok(());
        }
        let f = self.get(name)?;
        if path.len() >= MAX_DEPTH {
            return Err(ConfigError::FeatureKey {
                file: f.origin.to_string(),
                key: "# requires".into(),
                why: format!("requirements nest deeper than {MAX_DEPTH} features: {} -> ...", path[..3].join(" -> ")),
            });
        }
        if path.iter().any(|p| p == name) {
            return Err(ConfigError::FeatureKey {
                file: f.origin.to_string(),
                key: "# requires".into(),
                why: format!("features require each other in a circle: {} -> {name}", path.join(" -> ")),
            });
        }
        path.push(name.to_owned());
        for r in &f.requires {
            self.visit(r, path, out).map_err(|e| match e {
                ConfigError::UnknownFeature { .. } => {
                    ConfigError::FeatureKey { file: f.origin.to_string(), key: "# requires".into(), why: e.to_string() }
                }
                e => e,
            })?;
        }
        path.pop();
        out.push(f);
        Ok(())
    }

    /// The merged cloud-config of `wanted` (requirements first), in order.
    pub fn cloud_config(&self, wanted: &[String]) -> Result<Option<Value>, ConfigError> {
        let mut merged: Option<Value> = None;
        for f in self.expand(wanted)? {
            match &mut merged {
                Some(m) => {
                    clash(m, &f.config, f)?;
                    cloudinit::merge(m, &f.config)
                }
                None => merged = Some(f.config.clone()),
            }
        }
        Ok(merged)
    }
}

/// A top-level key two features give as different kinds of value (a list
/// and a mapping): merging would silently replace the earlier one.
fn clash(merged: &Value, next: &Value, f: &Feature) -> Result<(), ConfigError> {
    let kind = |v: &Value| match v {
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
        _ => "value",
    };
    for (key, v) in next.as_object().into_iter().flatten() {
        if let Some(before) = merged.get(key) {
            if kind(before) != kind(v) && (v.is_array() || v.is_object() || before.is_array() || before.is_object()) {
                return Err(ConfigError::FeatureKey {
                    file: f.origin.to_string(),
                    key: key.clone(),
                    why: format!(
                        "is a {} here but a {} in an earlier feature: they cannot merge",
                        kind(v),
                        kind(before)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The names and `.yaml` files of a features directory, sorted; hidden
/// names and other files are not features.
fn dir_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        tracing::debug!(dir = %dir.display(), "no features directory");
        return vec![];
    };
    let mut out: Vec<(String, PathBuf)> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?.to_owned();
            if file.starts_with('.') {
                return None;
            }
            if p.is_dir() {
                return Some((file, p));
            }
            Some((file.strip_suffix(".yaml")?.to_owned(), p))
        })
        .take(MAX_LOOKED_AT)
        .collect();
    out.sort();
    if out.len() > MAX_ENTRIES {
        crate::messages::warn(format!(
            "{} holds more than {MAX_ENTRIES} features: only the first {MAX_ENTRIES} by name are used",
            dir.display()
        ));
        out.truncate(MAX_ENTRIES);
    }
    out
}

/// How many names of one directory are looked at, at most.
const MAX_LOOKED_AT: usize = 100 * MAX_ENTRIES;

/// How deep `# requires:` may nest (a -> b -> c ... ).
const MAX_DEPTH: usize = 64;

/// How many features one directory may hold.
const MAX_ENTRIES: usize = 1000;

/// The directories this process uses (set once the settings are known)
/// and, once something asked, their library.
struct Current {
    dirs: Vec<PathBuf>,
    library: Option<Arc<Library>>,
}

static CURRENT: Mutex<Current> = Mutex::new(Current { dirs: Vec::new(), library: None });

/// Uses the features in `dirs` (besides the built-ins) from now on; they
/// are read when a feature is first asked for.
pub fn use_dirs(dirs: &[PathBuf]) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Current { dirs: dirs.to_vec(), library: None };
}

/// The library in use: the built-ins only until [`use_dirs`] is called.
pub fn library() -> Arc<Library> {
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    let Current { dirs, library } = &mut *current;
    library.get_or_insert_with(|| Arc::new(Library::load(dirs))).clone()
}

/// The directories of the library in use.
pub fn dirs_in_use() -> Vec<PathBuf> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).dirs.clone()
}

/// A digest of the content of the user's own features among `wanted` (and
/// what they require), from the library in use; `None` when they are all
/// built-in (their content goes with project-vm's version) or one cannot
/// be used (that is reported where the features are checked).
pub fn own_digest(wanted: &[String]) -> Option<String> {
    use sha2::{Digest, Sha256};
    let library = library();
    let features = library.expand(wanted).ok()?;
    let own: Vec<(&str, &Value)> =
        features.iter().filter(|f| f.origin != Origin::BuiltIn).map(|f| (f.name.as_str(), &f.config)).collect();
    if own.is_empty() {
        return None;
    }
    let json = serde_json::to_vec(&own).expect("json");
    Some(format!("{:x}", Sha256::digest(&json))[..16].to_owned())
}

/// Every feature name in the library in use.
pub fn names() -> Vec<String> {
    library().names()
}

/// Whether `name` is a usable feature of the library in use.
pub fn exists(name: &str) -> bool {
    library().get(name).is_ok()
}

/// A usable feature (read and checked, its requirements too), or why not.
pub fn check(name: &str) -> Result<(), ConfigError> {
    let lib = library();
    let f = lib.expand(&[name.to_owned()])?;
    schema::check(&f)?;
    Ok(())
}

/// The merged cloud-config of `wanted`, in order (requirements first).
pub fn cloud_config(wanted: &[String]) -> anyhow::Result<Option<Value>> {
    let lib = library();
    schema::check(&lib.expand(wanted)?)?;
    Ok(lib.cloud_config(wanted)?)
}

/// What is merged into project-vm's own cloud-config: the features in order,
/// then the user's cloud-config (which wins).
pub fn user_config(wanted: &[String], user_data: Option<&Value>) -> anyhow::Result<Option<Value>> {
    let mut merged = cloud_config(wanted)?;
    if let Some(user) = user_data {
        match &mut merged {
            Some(m) => cloudinit::merge(m, user),
            None => merged = Some(user.clone()),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_parses_and_merges() {
        let lib = Library::built_in();
        let v = lib.cloud_config(&lib.names()).unwrap().unwrap();
        let pkgs: Vec<&str> = v["packages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert!(pkgs.contains(&"git") && pkgs.contains(&"docker.io") && pkgs.contains(&"build-essential"), "{pkgs:?}");
        assert_eq!(lib.cloud_config(&[]).unwrap(), None);
        match lib.cloud_config(&["dokcer".into()]) {
            Err(ConfigError::UnknownFeature { name, suggestion, .. }) => {
                assert_eq!((name.as_str(), suggestion.as_str()), ("dokcer", " (did you mean \"docker\"?)"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_built_in_has_a_description() {
        for e in Library::built_in().entries {
            let f = e.feature.unwrap();
            assert!(!f.description.is_empty() && f.description.len() < 100, "{}: {:?}", f.name, f.description);
        }
    }

    #[test]
    fn docker_gpu_brings_docker_and_nvidia_first() {
        let lib = Library::built_in();
        let order: Vec<&str> = lib.expand(&["docker-gpu".into()]).unwrap().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(order, ["docker", "nvidia", "docker-gpu"]);
        let order: Vec<&str> =
            lib.expand(&["nvidia".into(), "docker-gpu".into()]).unwrap().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(order, ["nvidia", "docker", "docker-gpu"], "each once, in the order asked");
    }
}
