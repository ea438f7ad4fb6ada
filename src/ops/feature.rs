//! `project-vm feature list|show`: the feature library in use (the built-ins
//! and the settings' `feature_dirs`). Needs no libvirt connection.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;

use crate::features::{self, Library, Origin};
use crate::output::Report;

/// One row of `feature list`.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    /// `built-in`, or the file or directory it was read from.
    pub origin: Origin,
    pub description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    pub script: bool,
    pub files: usize,
    /// Why it cannot be used (it is listed all the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Features of the same name in later directories, which this one hides.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadows: Vec<String>,
}

/// `feature list`.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub dirs: Vec<String>,
    pub features: Vec<Row>,
}

pub fn listing(lib: &Library, dirs: &[std::path::PathBuf]) -> Listing {
    let features = lib
        .entries
        .iter()
        .map(|e| {
            let (description, requires, script, files, problem) = match &e.feature {
                // Read well, it may still not merge: what it requires is
                // missing, circles back, or clashes. `create` would refuse it.
                Ok(f) => (f.description.clone(), f.requires.clone(), f.script, f.files, merge_problem(lib, f)),
                Err(err) => (String::new(), vec![], false, 0, Some(err.to_string())),
            };
            Row {
                name: e.name.clone(),
                origin: e.origin.clone(),
                description,
                requires,
                script,
                files,
                problem,
                shadows: e.shadows.iter().map(|p| p.display().to_string()).collect(),
            }
        })
        .collect();
    Listing { dirs: dirs.iter().map(|d| d.display().to_string()).collect(), features }
}

/// Why `f` (the feature its name finds) cannot be merged with what it
/// requires, as `feature show`, `plan` and `create` would say it.
fn merge_problem(lib: &Library, f: &features::Feature) -> Option<String> {
    let found = lib.get(&f.name).ok()?;
    if !std::ptr::eq(found, f) {
        return None;
    }
    lib.cloud_config(std::slice::from_ref(&f.name)).err().map(|e| e.to_string())
}

impl Report for Listing {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let width = self.features.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
        writeln!(out, "{:width$}  {:40}  DESCRIPTION", "NAME", "FROM")?;
        for r in &self.features {
            let what = match &r.problem {
                Some(p) => format!("PROBLEM: {}", p.replace('\n', " ")),
                None if r.requires.is_empty() => r.description.clone(),
                None => format!("{} [requires {}]", r.description, r.requires.join(", ")),
            };
            writeln!(out, "{:width$}  {:40}  {what}", r.name, r.origin.to_string())?;
        }
        writeln!(out, "feature directories, first wins: {}", self.dirs.join(", "))
    }
}

/// `feature show NAME`: the merged cloud-config.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub name: String,
    pub origin: Origin,
    /// The features merged, in order (what it requires first).
    pub merged: Vec<String>,
    pub config: Value,
}

impl Report for Shown {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "#cloud-config")?;
        writeln!(out, "# feature {} ({}), merged: {}", self.name, self.origin, self.merged.join(", "))?;
        let yaml = serde_yaml_ng::to_string(&self.config).map_err(io::Error::other)?;
        out.write_all(yaml.as_bytes())
    }
}

pub fn show(lib: &Library, name: &str) -> anyhow::Result<Shown> {
    let f = lib.get(name)?;
    let merged = lib.expand(&[name.to_owned()])?.iter().map(|f| f.name.clone()).collect();
    let config = lib.cloud_config(&[name.to_owned()])?.unwrap_or_default();
    Ok(Shown { name: f.name.clone(), origin: f.origin.clone(), merged, config })
}

/// `feature list` of the library in use.
pub fn list() -> Listing {
    listing(&features::library(), &features::dirs_in_use())
}

/// `feature show NAME` of the library in use, checked as `create` checks it.
pub fn show_in_use(name: &str) -> anyhow::Result<Shown> {
    features::check(name)?;
    show(&features::library(), name)
}
