//! Command-line definitions (clap). No logic here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::images::checksum::Checksum;
use crate::spec::{Size, VmName};

fn vm_name(s: &str) -> Result<VmName, String> {
    VmName::parse(s).map_err(|e| e.to_string())
}

/// A feature's name; whether there is such a feature is known once the
/// settings (their `feature_dirs`) are read.
fn feature_name(s: &str) -> Result<String, String> {
    if crate::features::valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err("not a feature name: use lowercase letters, digits, '-' and '_' (`project-vm feature list` shows them)"
            .into())
    }
}

/// The exit codes for `--help` and the man page, from [`crate::error::Kind::ALL`].
fn exit_codes() -> String {
    let lines = crate::error::Kind::ALL.iter().map(|k| format!("  {:>3}  {}", k.exit_code(), k.meaning()));
    std::iter::once("Exit codes:\n    0  success".to_owned()).chain(lines).collect::<Vec<_>>().join("\n")
}

#[derive(Debug, Parser)]
#[command(
    name = "project-vm",
    version,
    about = "One libvirt VM per project",
    propagate_version = true,
    after_long_help = exit_codes()
)]
pub struct Cli {
    /// libvirt URI [default: qemu:///system for root, else qemu:///session]
    #[arg(long, short = 'c', global = true, env = "PROJECT_VM_URI")]
    pub connect: Option<String>,
    /// Host settings file (JSON) [default: /etc/project-vm/config.json, then $XDG_CONFIG_HOME/project-vm/config.json]
    #[arg(long, global = true, env = "PROJECT_VM_CONFIG")]
    pub config: Option<PathBuf>,
    /// With "hosts" in the settings: the host to work on (list and find VMs on that one only)
    #[arg(long, global = true, env = "PROJECT_VM_HOST", value_name = "NAME")]
    pub host: Option<String>,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// With --wait where no spinner is shown: one event per stage on stderr (a JSON line with --json)
    #[arg(long, global = true)]
    pub progress: bool,
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a VM: root overlay on the base image, project disk, cloud-init seed, domain.
    Create(CreateArgs),
    /// Start a VM.
    Start(StartArgs),
    /// Shut a VM down (guest agent if it answers, else ACPI, asked again every 10 s), powering it off if it does not stop in time.
    Stop(StopArgs),
    /// Stop, then start.
    Restart(RestartArgs),
    /// Save a running VM's memory to disk and shut it off; `start` resumes it where it was.
    Suspend(SuspendArgs),
    /// Make a new VM from an existing one: its root disk copied, a new identity, a fresh project disk.
    Clone(CloneArgs),
    /// Delete a VM and its disks (the project disk too, unless --keep-data).
    Destroy(DestroyArgs),
    /// List project-vm's VMs (those in the settings' pool).
    List(ListArgs),
    /// Show one VM: state, disks, addresses, ssh target.
    Status(NameArg),
    /// Run a VM's health checks in the guest (over ssh, pinned host key): a table of each check's result and time; exit 9 if one failed.
    Check(CheckArgs),
    /// ssh into a VM, verifying its pinned host key.
    Ssh(SshArgs),
    /// Print an ~/.ssh/config block for a VM (or all VMs); with --json, the same as fields.
    SshConfig(SshConfigArgs),
    /// Attach to a VM's serial console (Ctrl-] leaves).
    Console(NameArg),
    /// Show a VM's serial console log.
    Logs(LogsArgs),
    /// Reach guest ports from this machine's loopback through ssh (pinned host key) until Ctrl-C.
    Forward(ForwardArgs),
    /// Stream what happens to VMs (defined, started, suspended, resumed, stopped, crashed, undefined, ready) as it happens.
    Watch(WatchArgs),
    /// Snapshots of a VM: both disks, and its memory when taken running.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Manage base images in the storage pool.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Provision a VM again in place: its features, user data (and application script), keeping its host key, machine-id and project disk; waits like --wait.
    Reconfigure(ReconfigureArgs),
    /// The feature library: built-in features and those of feature_dirs.
    #[command(subcommand)]
    Feature(FeatureCommand),
    /// Show what `apply` would do for a declarative file.
    Plan(PlanArgs),
    /// Bring VMs in line with a declarative file (idempotent).
    Apply(ApplyArgs),
    /// List (and with --yes remove) what interrupted runs left: volumes without a record, half-made VMs, unverified images.
    Gc(GcArgs),
    /// Check what would make a create fail here, and how to fix it.
    Doctor,
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) made from these definitions: `project-vm man > project-vm.1`.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// VMs in every storage pool, not only the settings' pool
    #[arg(long)]
    pub all_pools: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove what is listed (otherwise only list it)
    #[arg(long)]
    pub yes: bool,
    /// Kept project disks to remove too (they are never removed unless named)
    #[arg(value_name = "KEPT_DISK")]
    pub kept_disks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NameArg {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until cloud-init has finished in the guest (exit 5 if it failed).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 6; the VM keeps running).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Memory, binary units (e.g. 512M, 8G)
    #[arg(default_value = "4G")]
    pub memory: Size,
    /// Virtual CPUs
    #[arg(default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub cpus: u32,
    /// Root disk size (the overlay's virtual size)
    #[arg(default_value = "20G")]
    pub disk: Size,
    /// Size of the persistent project disk (mounted at /project)
    #[arg(long, default_value = "50G", value_name = "SIZE")]
    pub project_disk: Size,
    /// A cloud-config file merged into the generated one
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// A script run once, last, after the features on the first boot (its exit status and last lines reach `--wait`)
    #[arg(long, value_name = "FILE")]
    pub application_script: Option<PathBuf>,
    /// A feature to add (repeatable): a built-in (base, devtools, docker, docker-gpu, nix, nvidia) or one of feature_dirs
    #[arg(long = "feature", value_name = "NAME", value_parser = feature_name)]
    pub features: Vec<String>,
    /// Base image (an image name, pulled from the catalog on first use, or a file); default: the base_image setting
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Start the VM with the host (libvirt autostart)
    #[arg(long)]
    pub autostart: bool,
    /// Firmware: bios, or efi (UEFI through libvirt's firmware autoselection)
    #[arg(long, value_enum, default_value = "bios")]
    pub firmware: FirmwareArg,
    /// A fixed address with its prefix instead of DHCP (first boot), e.g. 10.0.0.5/24
    #[arg(long, value_name = "ADDRESS/PREFIX")]
    pub ip: Option<ipnet::IpNet>,
    /// With --ip: the default gateway
    #[arg(long, value_name = "IP", requires = "ip")]
    pub gateway: Option<std::net::IpAddr>,
    /// With --ip: a DNS server (repeatable)
    #[arg(long, value_name = "IP", requires = "ip")]
    pub dns: Vec<std::net::IpAddr>,
    /// Share a host directory over virtiofs, mounted in the guest (repeatable): /host/dir:/mnt/x[:ro]
    #[arg(long = "share", value_name = "SOURCE:TARGET[:ro]")]
    pub shares: Vec<crate::spec::Share>,
    /// A host PCI device to pass through, e.g. 0000:01:00.0 (repeatable; implies efi)
    #[arg(long = "hostdev", value_name = "PCI_ADDRESS")]
    pub hostdevs: Vec<crate::spec::PciAddress>,
    /// Forward a guest port from the libvirt host (repeatable; user networking): HOST:GUEST, [ADDRESS:]HOST:GUEST[/udp]
    #[arg(long = "port", value_name = "HOST:GUEST")]
    pub ports: Vec<crate::spec::Port>,
    /// With --wait: snapshot it as `pre-configured` once its features are done and `final-form` once it is ready (first provisioning only)
    #[arg(long)]
    pub stage_snapshots: bool,
    /// Start it after creating
    #[arg(long)]
    pub start: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FirmwareArg {
    Bios,
    Efi,
}

impl From<FirmwareArg> for crate::spec::Firmware {
    fn from(f: FirmwareArg) -> Self {
        match f {
            FirmwareArg::Bios => crate::spec::Firmware::Bios,
            FirmwareArg::Efi => crate::spec::Firmware::Efi,
        }
    }
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[arg(value_parser = vm_name, required_unless_present = "suspended")]
    pub name: Option<VmName>,
    /// Resume every suspended VM instead (at host start; see `suspend --all`)
    #[arg(long, conflicts_with = "name")]
    pub suspended: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct SuspendArgs {
    #[arg(value_parser = vm_name, required_unless_present = "all")]
    pub name: Option<VmName>,
    /// Every running VM (at host shutdown; `start --suspended` resumes them)
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The VM to copy (shut off, or use --stop)
    #[arg(value_parser = vm_name)]
    pub source: VmName,
    /// The new VM's name
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Copy the project disk too (otherwise the clone gets a fresh, empty one)
    #[arg(long)]
    pub with_data: bool,
    /// Stop a running source for the copy (and start it again after)
    #[arg(long)]
    pub stop: bool,
    /// Private key for the ssh that gives the copy its new identity
    #[arg(long, short = 'i', env = "PROJECT_VM_SSH_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Seconds to wait for a graceful shutdown before powering off
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
    /// Power off at once (a suspended VM: discard its saved state)
    #[arg(long)]
    pub force: bool,
    /// Suspend instead: save the memory, so `start` resumes where it was
    #[arg(long, conflicts_with = "force")]
    pub save: bool,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Seconds to wait for a graceful shutdown before powering off
    #[arg(long = "stop-timeout", default_value_t = 60, value_name = "SECS")]
    pub stop_timeout: u64,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Keep the project disk; a later `create` of the same name reattaches it
    #[arg(long)]
    pub keep_data: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Private key to use (passed to ssh -i)
    #[arg(long, short = 'i', env = "PROJECT_VM_SSH_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Command to run instead of a login shell (after --)
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Private key to use (passed to ssh -i)
    #[arg(long, short = 'i', env = "PROJECT_VM_SSH_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Local port, and the guest's port when it differs (repeatable)
    #[arg(value_name = "HOST_PORT[:GUEST_PORT]", required = true)]
    pub ports: Vec<crate::spec::Tunnel>,
    /// Private key to use (passed to ssh -i)
    #[arg(long, short = 'i', env = "PROJECT_VM_SSH_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    #[arg(value_parser = vm_name)]
    pub name: Option<VmName>,
    /// Private key for the blocks' IdentityFile
    #[arg(long, short = 'i', env = "PROJECT_VM_SSH_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only these VMs (they need not exist yet) [default: every project-vm VM]
    #[arg(value_parser = vm_name)]
    pub names: Vec<VmName>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// Keep printing as the log grows
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct ReconfigureArgs {
    #[arg(value_parser = vm_name)]
    pub name: VmName,
    /// The cloud-config file to merge in (the user data is not recorded, so give it again; without it, none)
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// The features (repeatable) [default: the ones the VM has]
    #[arg(long = "feature", value_name = "NAME", value_parser = feature_name)]
    pub features: Vec<String>,
    /// The application script, run again last (not recorded, so give it again; without it, none)
    #[arg(long, value_name = "FILE")]
    pub application_script: Option<PathBuf>,
    /// Private key for the ssh that clears the guest's cloud-init instance
    #[arg(long, short = 'i', env = "PROJECT_VM_SSH_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Give up waiting for the guest after this many seconds (exit 6; the VM keeps running)
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The declarative file
    #[arg(long, short = 'f', env = "PROJECT_VM_FILE", default_value = "project-vm.json", value_name = "FILE")]
    pub file: PathBuf,
    /// Plan to destroy project-vm VMs that are not in the file (their project disks are kept)
    #[arg(long)]
    pub prune: bool,
    /// Plan to restart running VMs whose memory/cpus changed
    #[arg(long)]
    pub restart: bool,
    /// Plan to rebuild VMs whose image or cloud-init changed (project disks are kept)
    #[arg(long)]
    pub recreate: bool,
    /// Plan to provision VMs whose cloud-init (features, user data) changed again in place, as `reconfigure` does
    #[arg(long, conflicts_with = "recreate")]
    pub reconfigure: bool,
    /// With --prune: VMs in every storage pool are in scope, not only the settings' pool
    #[arg(long)]
    pub all_pools: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// With --prune: delete the pruned VMs' project disks too
    #[arg(long, requires = "prune")]
    pub delete_data: bool,
    /// VMs worked on at once (on each host)
    #[arg(long, short = 'j', default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot (running: disks and memory; stopped: disks).
    Create {
        #[arg(value_parser = vm_name)]
        name: VmName,
        /// Snapshot name [default: snap-N]
        snapshot: Option<String>,
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List a VM's snapshots.
    List {
        #[arg(value_parser = vm_name)]
        name: VmName,
    },
    /// Go back to a snapshot (a running VM stays running).
    Revert {
        #[arg(value_parser = vm_name)]
        name: VmName,
        snapshot: String,
    },
    /// Delete a snapshot.
    Delete {
        #[arg(value_parser = vm_name)]
        name: VmName,
        snapshot: String,
    },
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// A catalog name (debian-12, debian-13, ubuntu-22.04, ubuntu-24.04, or one from the "images" setting) or a URL
    #[arg(value_name = "NAME|URL")]
    pub what: String,
    /// Store it under this image name [default: the catalog name, or the URL's file name]
    #[arg(long)]
    pub name: Option<String>,
    /// The expected digest (sha256:HEX or sha512:HEX)
    #[arg(long, value_name = "ALGO:HEX")]
    pub checksum: Option<Checksum>,
    /// A checksum file (SHA256SUMS, SHA512SUMS) that lists the image by its file name
    #[arg(long, value_name = "URL", conflicts_with = "checksum")]
    pub checksums: Option<String>,
    /// Download again if the published image changed (otherwise a pulled image is reused)
    #[arg(long)]
    pub refresh: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Download an image (a catalog name or a URL) into the pool, checked against its published checksum.
    Pull(PullArgs),
    /// Upload an image file (qcow2 or raw) into the pool.
    Import {
        file: PathBuf,
        /// Image name [default: the file's name without .qcow2/.img/.raw]
        #[arg(long)]
        name: Option<String>,
        /// The file's expected digest (sha256:HEX or sha512:HEX)
        #[arg(long, value_name = "ALGO:HEX")]
        checksum: Option<Checksum>,
    },
    /// Turn a prepared VM's root disk into a template image (a sealed, standalone copy).
    Save {
        #[arg(value_parser = vm_name)]
        vm: VmName,
        /// The new image's name
        name: String,
        /// Stop the VM for the copy if it runs (and start it again after)
        #[arg(long)]
        stop: bool,
        /// Private key for the ssh that seals the copy
        #[arg(long, short = 'i', env = "PROJECT_VM_SSH_IDENTITY", value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// List images: where each came from, its checksum, and the VMs built on it.
    List,
    /// Delete an image no VM is built on (every generation of it).
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum FeatureCommand {
    /// List every feature: its name, where it comes from, what it does (and any problem).
    List,
    /// Print a feature's merged cloud-config (what it requires first, its script and files folded in).
    Show {
        #[arg(value_parser = feature_name)]
        name: String,
    },
}
