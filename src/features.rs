//! Feature snippets: named cloud-configs shipped with the binary
//! (cloud-init/features/*.yaml), merged into a VM's generated cloud-config.

use serde_json::Value;

use crate::cloudinit;
use crate::config::error::ConfigError;

const FEATURES: &[(&str, &str)] = &[
    ("base", include_str!("../cloud-init/features/base.yaml")),
    ("devtools", include_str!("../cloud-init/features/devtools.yaml")),
    ("docker", include_str!("../cloud-init/features/docker.yaml")),
    ("nix", include_str!("../cloud-init/features/nix.yaml")),
];

pub fn names() -> Vec<&'static str> {
    FEATURES.iter().map(|(n, _)| *n).collect()
}

pub fn exists(name: &str) -> bool {
    FEATURES.iter().any(|(n, _)| *n == name)
}

/// A shipped feature, or [`ConfigError::UnknownFeature`] with a did-you-mean.
pub fn check(name: &str) -> Result<(), ConfigError> {
    if exists(name) {
        return Ok(());
    }
    Err(ConfigError::UnknownFeature {
        name: name.to_owned(),
        suggestion: crate::suggest::did_you_mean(name, &names()),
        known: names().join(", "),
    })
}

/// The merged cloud-config of `names`, in order.
pub fn cloud_config(wanted: &[String]) -> anyhow::Result<Option<Value>> {
    let mut merged: Option<Value> = None;
    for name in wanted {
        check(name)?;
        let (_, text) = FEATURES.iter().find(|(n, _)| n == name).expect("checked");
        let v = cloudinit::parse_user_data(text, &format!("feature {name}"))?;
        match &mut merged {
            Some(m) => cloudinit::merge(m, &v),
            None => merged = Some(v),
        }
    }
    Ok(merged)
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
        let all: Vec<String> = names().into_iter().map(String::from).collect();
        let v = cloud_config(&all).unwrap().unwrap();
        let pkgs: Vec<&str> = v["packages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert!(pkgs.contains(&"git") && pkgs.contains(&"docker.io") && pkgs.contains(&"build-essential"), "{pkgs:?}");
        assert_eq!(cloud_config(&[]).unwrap(), None);
        let e = cloud_config(&["dokcer".into()]).unwrap_err();
        match e.downcast_ref::<ConfigError>() {
            Some(ConfigError::UnknownFeature { name, suggestion, .. }) => {
                assert_eq!((name.as_str(), suggestion.as_str()), ("dokcer", " (did you mean \"docker\"?)"))
            }
            other => panic!("{other:?}"),
        }
    }
}
