//! The config layer's failures (the declarative file, host settings, a VM's
//! declaration and its resolved spec, features, user cloud-config): bad
//! input, named by where it was found. Kept in a module of its own, below
//! everything that validates input, so `spec` and `settings` can return it
//! without importing the declarative file's parser.

/// The config layer's failures. Every variant is bad input (exit 2) but
/// [`ConfigError::Environment`]: a file project-vm reads or keeps for the
/// user that the environment does not let it reach.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// Problems found in a file or a declaration, each with its path
    /// (`vms.db.memory: "8X" is not a size like 512M or 8G`), all at once.
    #[error("{}", problems.join("\n"))]
    Problems { problems: Vec<String> },
    /// Every problem of one file (sorted), nothing changed.
    #[error("{origin}: {} problem{}; nothing was changed:\n  {}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.join("\n  "))]
    File { origin: String, problems: Vec<String> },
    /// One value refused: what it is and why.
    #[error("{what}: {why}")]
    Value { what: String, why: String },
    /// A VM name that is not `^[a-z][a-z0-9-]{{0,47}}$`.
    #[error(
        "invalid VM name {name:?}: use 1 to 48 characters, lowercase letters, digits and '-', starting with a letter (e.g. \"my-app\")"
    )]
    VmName { name: String },
    /// Memory below [`crate::spec::MIN_MEMORY`].
    #[error("memory {memory} is below the minimum of {min}")]
    MemoryTooSmall { memory: String, min: String },
    /// Memory that is not a whole number of MiB.
    #[error("memory {memory} is not a whole number of MiB")]
    MemoryNotWholeMib { memory: String },
    /// Memory above [`crate::spec::MAX_MEMORY`].
    #[error("memory {memory} is above the maximum of {max}")]
    MemoryTooLarge { memory: String, max: String },
    /// A disk above [`crate::spec::MAX_DISK`].
    #[error("{what} {size} is above the maximum of {max}")]
    DiskTooLarge { what: &'static str, size: String, max: String },
    /// A project disk below [`crate::spec::MIN_PROJECT_DISK`].
    #[error("project_disk {size} is below the minimum of {min} (it holds an ext4 filesystem)")]
    ProjectDiskTooSmall { size: String, min: String },
    /// No CPUs, or more than [`crate::spec::MAX_CPUS`].
    #[error(
        "cpus {cpus} is out of range: give 1 to {max} (more needs x2APIC interrupt remapping, which project-vm does not set up)"
    )]
    CpusOutOfRange { cpus: u32, max: u32 },
    /// One of a VM's own values refused, named by the VM (`VM foo: memory
    /// 1M is below the minimum of 128M`).
    #[error("VM {vm}: {error}")]
    OfVm { vm: String, error: Box<ConfigError> },
    /// A share that may not be made: `share SOURCE:TARGET: why`.
    #[error("share {share}: {why}")]
    UnsafeShare { share: String, why: String },
    /// A feature that is not shipped, with a did-you-mean.
    #[error("unknown feature {name:?}{suggestion}: known features are {known}")]
    UnknownFeature { name: String, suggestion: String, known: String },
    /// Keys of a user's cloud-config that would take away what project-vm
    /// needs in the guest, each `key: why`.
    #[error(
        "{origin}: {} in the cloud-config would take away what project-vm needs in the guest:\n  {}",
        if keys.len() == 1 { "1 key".to_string() } else { format!("{} keys", keys.len()) },
        keys.join("\n  ")
    )]
    UnsafeCloudConfig { origin: String, keys: Vec<String> },
    // The feature library (src/features): each names the file and, where
    // there is one, the key.
    /// A feature file that is not YAML, or not a `#cloud-config` mapping.
    #[error("{file}: not a valid feature: {why}")]
    FeatureYaml { file: String, why: String },
    /// A key of a feature that breaks the merge rules (or names something
    /// that is not there): `file: key: why`.
    #[error("{file}: {key}: {why}")]
    FeatureKey { file: String, key: String, why: String },
    /// A feature's file over its limit.
    #[error("{file} is {size} bytes, over the limit of {limit} for a feature's {what}")]
    FeatureTooLarge { file: String, what: &'static str, size: u64, limit: String },
    /// A feature directory without its `feature.yaml`.
    #[error("{dir}: a feature directory needs {missing} (its cloud-config snippet, first line \"#cloud-config\")")]
    FeatureIncomplete { dir: String, missing: &'static str },
    /// A feature in a directory with the name of a built-in one.
    #[error("{file}: feature {name:?} has the name of a built-in feature, which a feature directory may not replace: rename it (e.g. \"my-{name}\")")]
    FeatureShadowsBuiltIn { name: String, file: String },
    /// Anything else wrong with a feature file or directory, said in a sentence.
    #[error("{file}: {why}")]
    FeatureInvalid { file: String, why: String },
    /// cloud-init's own schema check refused a feature.
    #[error("{file}: cloud-init's schema check ({validator}) refused it:\n{output}")]
    FeatureSchema { file: String, validator: String, output: String },
    /// The environment refused a file project-vm reads or keeps for the user
    /// (the user's rights under sudo, the per-user secret's place).
    #[error("{0}")]
    Environment(String),
    /// Anything else about the input, said in a sentence.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// [`ConfigError::Invalid`] as an `anyhow::Error`.
    pub fn invalid(message: impl Into<String>) -> anyhow::Error {
        ConfigError::Invalid(message.into()).into()
    }
}

impl crate::error::Classified for ConfigError {
    fn kind(&self) -> crate::error::Kind {
        match self {
            ConfigError::Environment(_) => crate::error::Kind::Environment,
            _ => crate::error::Kind::Invalid,
        }
    }
}
