//! cloud-init's own schema check on the user's features, at `plan` and
//! `create`, when `PROJECT_VM_CLOUD_INIT_VALIDATORS` names cloud-init
//! executables (a `:`-separated list, as scripts/cloud-init-validators.sh
//! prints them; the built-ins are checked by the tests on every supported
//! cloud-init). Each feature is checked once per process.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use super::{Feature, Origin};
use crate::config::error::ConfigError;

pub const VALIDATORS_ENV: &str = "PROJECT_VM_CLOUD_INIT_VALIDATORS";

static CHECKED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn validators() -> Vec<PathBuf> {
    std::env::var_os(VALIDATORS_ENV)
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default()
}

/// Every feature of `features` that is not built in, through every validator.
pub fn check(features: &[&Feature]) -> Result<(), ConfigError> {
    let validators = validators();
    if validators.is_empty() {
        return Ok(());
    }
    for f in features.iter().filter(|f| f.origin != Origin::BuiltIn) {
        let key = f.origin.to_string();
        if CHECKED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashSet::new).contains(&key) {
            continue;
        }
        for v in &validators {
            one(f, v)?;
        }
        CHECKED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashSet::new).insert(key);
    }
    Ok(())
}

/// `validator schema -c FILE` on the feature's folded cloud-config.
fn one(f: &Feature, validator: &std::path::Path) -> Result<(), ConfigError> {
    let file = f.origin.to_string();
    let refused = |output: String| ConfigError::FeatureSchema {
        file: file.clone(),
        validator: validator.display().to_string(),
        output,
    };
    let tmp = std::env::temp_dir().join(format!("project-vm-feature-{}-{}.yaml", f.name, uuid::Uuid::new_v4()));
    let text = format!("#cloud-config\n{}\n", serde_json::to_string_pretty(&f.config).expect("json"));
    let written = crate::files::create_new_private(&tmp).and_then(|mut w| w.write_all(text.as_bytes()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(refused(format!("cannot write {}: {e}", tmp.display())));
    }
    let out = Command::new(validator).arg("schema").arg("-c").arg(&tmp).output();
    let _ = std::fs::remove_file(&tmp);
    let out = out.map_err(|e| refused(format!("cannot run it: {e}")))?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if clean(out.status.success(), &said) {
        return Ok(());
    }
    Err(refused(said.trim().to_owned()))
}

/// Valid, and no warning or deprecation (trixie's cloud-init degrades on those).
pub fn clean(ok: bool, said: &str) -> bool {
    ok && said.contains("Valid") && !["WARNING", "eprecat", "Error", "Invalid"].iter().any(|w| said.contains(w))
}
