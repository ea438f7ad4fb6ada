//! `start --wait`: the guest says when it is up, and how cloud-init went.
//!
//! The generated cloud-config installs a reporter that runs on every boot
//! (whether or not cloud-init runs on it) and writes one JSON line to a
//! virtio-serial channel: on a boot where cloud-init runs, once its final
//! stage is done, with cloud-init's result; on a boot where it does not (its
//! generator disabled it, or it is gone), at once. We read that channel through libvirt
//! (virDomainOpenChannel), so this works over qemu+ssh:// with no network path
//! to the guest, no guest agent and no polling of ssh.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use virt::stream::Stream;
use virt::sys;

use super::Ctx;
use crate::health::CheckResult;
use crate::interrupt;
use crate::libvirt::domain_xml::READY_CHANNEL;
use crate::libvirt::vms::Vm;
use crate::progress::Progress;

/// What the guest's reporter sends (see cloud-init/project-vm-ready): cloud-init's
/// own `result.json` and `status.json`, interpreted here.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub boot_id: String,
    /// The boot id of the instance's first report (reporter version 3+).
    #[serde(default)]
    pub first_boot_id: Option<String>,
    /// Whether cloud-init ran on this boot (reporter version 3+).
    #[serde(default)]
    pub cloud_init: Option<CloudInitRun>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub status: Option<Value>,
    /// Guest clock: when this line was written, seconds since the epoch.
    #[serde(default)]
    pub sent_at: Option<f64>,
    /// The same moment in seconds since the guest booted (/proc/uptime).
    #[serde(default)]
    pub uptime: Option<f64>,
    /// `cloud-init schema --system` output, when cloud-init said the
    /// cloud-config failed its schema (it does not say how).
    #[serde(default)]
    pub schema: Option<String>,
    /// The application script's run on the first boot (reporter version 4+).
    #[serde(default)]
    pub application: Option<Application>,
    /// The checks' results on the first boot, the runner's lines (version 4+).
    #[serde(default)]
    pub checks: Option<Vec<Value>>,
}

/// The application script's run: its exit status and its output's last lines.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Application {
    pub exit: i32,
    #[serde(default)]
    pub tail: String,
}

/// The live metadata element `start --wait` writes with the guest's
/// readiness: `<ready result="done|degraded|error" boot="..."/>`.
pub const READY_NAMESPACE: &str = "https://project-vm.dev/xmlns/ready/1";
pub const READY_KEY: &str = "projectvm-ready";

/// Records the guest's readiness in the running domain's live metadata,
/// for `watch` (a metadata change event). Only the live definition: it
/// goes with this boot. A failure to record is only logged.
pub fn record_ready(dom: &virt::domain::Domain, report: &ReadyReport) {
    let quote = |s: &str| s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;");
    let detail = report.errors.first().map(|e| format!(" detail=\"{}\"", quote(e))).unwrap_or_default();
    let xml = format!(r#"<ready result="{}" boot="{}"{detail}/>"#, report.result, quote(&report.boot_id));
    let kind = virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32;
    if let Err(e) =
        dom.set_metadata(kind, Some(&xml), Some(READY_KEY), Some(READY_NAMESPACE), virt::sys::VIR_DOMAIN_AFFECT_LIVE)
    {
        tracing::debug!("recording readiness for watch: {}", e.message());
    }
}

pub use crate::progress::StageLine;

/// The moments of a first boot that a caller of [`wait_with`] may act on
/// (stage snapshots), in order; each comes once.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The guest says how far it got (every stage line).
    Stage(StageLine),
    /// cloud-init's final stage is done, the features with it.
    FeaturesDone,
    /// The application script ran (`exit`: its status; 0 passed).
    ApplicationDone { exit: i32 },
    /// The application script (if any) and every check passed (`checks`:
    /// how many; 0 when the VM has none).
    ChecksPassed { checks: usize },
}

/// What [`wait_with`] calls for each [`Event`]; an error ends the wait.
pub type OnEvent<'a> = &'a mut dyn FnMut(&Event) -> anyhow::Result<()>;

/// Whether cloud-init ran on the reported boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudInitRun {
    /// It ran: the report carries its result.
    Ran,
    /// Installed, but its generator disabled it on this boot (no datasource
    /// found, or `/etc/cloud/cloud-init.disabled`).
    Disabled,
    /// Not installed (any more).
    Absent,
}

/// Which boot of the instance a report is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Boot {
    /// The boot that provisioned it (or a report that cannot tell).
    First,
    /// A later boot of the same instance: nothing is provisioned again.
    Later,
}

/// Stage times below this are seconds since boot (cloud-init 24+), above it
/// seconds since the epoch (older releases). No guest has been up for 30
/// years, and no clock that reads 1971 runs cloud-init.
const EPOCH_THRESHOLD: f64 = 1.0e9;

#[derive(Debug, Serialize)]
pub struct ReadyReport {
    pub name: String,
    /// `done`, `error` or `degraded`.
    pub result: &'static str,
    pub cloud_init_status: String,
    pub errors: Vec<String>,
    /// Seconds from the start of the wait to the report.
    pub waited_s: f64,
    /// Seconds from cloud-init finishing to the report being sent (guest clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_latency_s: Option<f64>,
    pub boot_id: String,
    pub boot: Boot,
    pub cloud_init: CloudInitRun,
    /// The application script's run (first boot only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<Application>,
    /// The checks' results: the guest's own on the first boot, else run
    /// over ssh after the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<CheckResult>>,
}

impl Message {
    pub fn parse(line: &str) -> Option<Message> {
        let v: Value = serde_json::from_str(line.trim()).ok()?;
        v.get("project_vm_ready")?;
        serde_json::from_value(v).ok()
    }

    /// Fatal errors: result.json's list, plus any stage's own errors.
    pub fn errors(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let as_strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| a.iter().map(|e| e.as_str().map(String::from).unwrap_or_else(|| e.to_string())).collect())
                .unwrap_or_default()
        };
        out.extend(as_strings(self.result.as_ref().and_then(|r| r.pointer("/v1/errors"))));
        for (_, stage) in self.stages() {
            for e in as_strings(stage.get("errors")) {
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// Recoverable errors (cloud-init 23.4+ reports these as "degraded"),
    /// with the validator's own findings when the schema was the cause.
    pub fn recoverable_errors(&self) -> Vec<String> {
        let mut out = self.stage_warnings();
        let schema = self.schema.as_deref().unwrap_or_default();
        out.extend(
            schema
                .lines()
                .map(str::trim)
                .filter(|l| l.contains("Error") || l.contains("eprecat"))
                .filter(|l| *l != "Error:")
                .map(|l| format!("schema: {l}")),
        );
        out
    }

    fn stage_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, stage) in self.stages() {
            if let Some(levels) = stage.get("recoverable_errors").and_then(Value::as_object) {
                for (level, msgs) in levels {
                    for m in msgs.as_array().into_iter().flatten() {
                        out.push(format!("{name}: {level}: {}", m.as_str().unwrap_or_default()));
                    }
                }
            }
        }
        out
    }

    fn stages(&self) -> Vec<(&str, &serde_json::Map<String, Value>)> {
        self.status
            .as_ref()
            .and_then(|s| s.pointer("/v1"))
            .and_then(Value::as_object)
            .map(|v1| v1.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_object()?))).collect())
            .unwrap_or_default()
    }

    /// The checks' results the guest sent, if it ran them.
    pub fn check_results(&self) -> Option<Vec<CheckResult>> {
        let lines = self.checks.as_ref()?;
        Some(lines.iter().filter_map(|v| CheckResult::from_value(v.clone())).collect())
    }

    /// Guest clock: when cloud-init's final stage finished.
    pub fn final_finished(&self) -> Option<f64> {
        self.status.as_ref()?.pointer("/v1/modules-final/finished")?.as_f64()
    }

    /// Seconds from cloud-init finishing to this report, on whichever clock
    /// cloud-init stamped its stages with.
    pub fn report_latency(&self) -> Option<f64> {
        let finished = self.final_finished()?;
        let now = if finished >= EPOCH_THRESHOLD { self.sent_at? } else { self.uptime? };
        (now >= finished).then_some(now - finished)
    }

    /// Whether cloud-init ran on this boot (older reporters only said
    /// `disabled`).
    pub fn cloud_init_run(&self) -> CloudInitRun {
        match (self.cloud_init, self.disabled) {
            (Some(run), _) => run,
            (None, true) => CloudInitRun::Disabled,
            (None, false) => CloudInitRun::Ran,
        }
    }

    /// A later boot of the instance: its first report came from another boot.
    pub fn boot(&self) -> Boot {
        match &self.first_boot_id {
            Some(first) if *first != self.boot_id => Boot::Later,
            _ => Boot::First,
        }
    }

    /// cloud-init's status in its own words.
    pub fn status_word(&self) -> &'static str {
        if self.cloud_init_run() == CloudInitRun::Absent {
            "absent"
        } else if self.cloud_init_run() == CloudInitRun::Disabled {
            "disabled"
        } else if self.result.is_none() {
            "unknown"
        } else if !self.errors().is_empty() {
            "error"
        } else if !self.stage_warnings().is_empty() {
            "degraded done"
        } else {
            "done"
        }
    }

    /// `done`, `degraded` or `error`. A guest without a result (cloud-init
    /// disabled on this boot, or absent) counts as done: it booted and is not
    /// provisioning. (Whether that is right for the VM's first boot is for
    /// [`wait`] to say: it knows whether the seed was ever used.)
    pub fn result(&self) -> &'static str {
        match self.status_word() {
            "error" => "error",
            "degraded done" => "degraded",
            _ => "done",
        }
    }
}

/// Reads lines from the ready channel, reconnecting across reboots (and,
/// through [`Channel::relink`], across a restart of the daemon).
struct Channel {
    conn: virt::connect::Connect,
    dom: virt::domain::Domain,
    stream: Option<Stream>,
    buf: Vec<u8>,
}

impl Channel {
    /// Watches the same domain through a new connection.
    fn relink(&mut self, conn: virt::connect::Connect, dom: virt::domain::Domain) {
        (self.conn, self.dom, self.stream) = (conn, dom, None);
        self.buf.clear();
    }

    fn poll_line(&mut self) -> Option<String> {
        if self.stream.is_none() {
            let stream = Stream::new(&self.conn, sys::VIR_STREAM_NONBLOCK).ok()?;
            match self.dom.open_channel(Some(READY_CHANNEL), &stream, 0) {
                Ok(()) => self.stream = Some(stream),
                Err(e) => {
                    tracing::debug!("ready channel not open yet: {}", e.message());
                    return None;
                }
            }
        }
        let stream = self.stream.as_ref()?;
        let mut chunk = [0u8; 4096];
        loop {
            match stream.recv(&mut chunk) {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&chunk[..n as usize]),
                Ok(-2) => break, // no data yet
                Ok(_) | Err(_) => {
                    // EOF or error: the guest rebooted or the VM stopped. Reopen later.
                    self.stream = None;
                    break;
                }
            }
        }
        let pos = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=pos).collect();
        Some(String::from_utf8_lossy(&line).into_owned())
    }
}

/// Waits for the guest's report; once cloud-init has used the seed, removes it.
pub fn wait(ctx: &Ctx, vm: &Vm, timeout: Duration, progress: &Progress) -> anyhow::Result<ReadyReport> {
    wait_with(ctx, vm, timeout, progress, &mut |_| Ok(()))
}

/// [`wait`], calling `on_event` for each [`Event`] of the boot: the guest's
/// stages as they come, then what its report says, then (when the guest did
/// not run them itself, as on a later boot) the checks run over ssh.
pub fn wait_with(
    ctx: &Ctx,
    vm: &Vm,
    timeout: Duration,
    progress: &Progress,
    on_event: OnEvent,
) -> anyhow::Result<ReadyReport> {
    let (mut report, mut emitted) = await_inner(ctx, &vm.dom, vm.name.as_str(), timeout, progress, on_event)?;
    if vm.own.seed_volume.is_some() && report.cloud_init != CloudInitRun::Ran {
        // The seed is still there, so this VM was never provisioned, and
        // cloud-init did not run to do it: its verdict is what this wait
        // reports. The seed stays for a boot that does read it.
        report.result = "error";
        report.errors.push(format!(
            "cloud-init did not run on {}'s first boot ({}): the seed was not read, so the VM is not provisioned",
            vm.name,
            match report.cloud_init {
                CloudInitRun::Absent => "the image has no cloud-init",
                _ => "cloud-init is disabled in the image (its generator or /etc/cloud/cloud-init.disabled)",
            }
        ));
        record_ready(&vm.dom, &report);
        return Ok(report);
    }
    // cloud-init has run (whatever its result): the seed, which holds the
    // private host key, is no longer needed.
    super::seed::remove(ctx, vm)?;
    report_events(&report, &mut emitted, on_event)?;
    after_report(ctx, vm, &mut report, progress, on_event)?;
    record_ready(&vm.dom, &report);
    Ok(report)
}

/// The events of the report the stage lines did not bring (the host may
/// have connected after they were sent).
fn report_events(report: &ReadyReport, emitted: &mut Emitted, on_event: OnEvent) -> anyhow::Result<()> {
    let first = report.boot == Boot::First && report.cloud_init == CloudInitRun::Ran;
    if first && report.result != "error" && !emitted.features {
        emitted.features = true;
        on_event(&Event::FeaturesDone)?;
    }
    if let Some(app) = report.application.as_ref().filter(|_| !emitted.application) {
        emitted.application = true;
        on_event(&Event::ApplicationDone { exit: app.exit })?;
    }
    Ok(())
}

/// Once the guest has reported: the checks (the guest's own results, or
/// run over ssh now), recorded for `status`; `ChecksPassed` when all pass.
fn after_report(
    ctx: &Ctx,
    vm: &Vm,
    report: &mut ReadyReport,
    progress: &Progress,
    on_event: OnEvent,
) -> anyhow::Result<()> {
    if report.result == "error" || report.application.as_ref().is_some_and(|a| a.exit != 0) {
        return Ok(());
    }
    let checks = vm.spec().map(|s| s.checks).unwrap_or_default();
    if report.checks.is_none() && !checks.is_empty() {
        let identity = std::env::var_os("PROJECT_VM_SSH_IDENTITY").map(std::path::PathBuf::from);
        report.checks = Some(super::check::run(ctx, vm, &checks, identity.as_deref(), progress)?);
    }
    if let Some(results) = &report.checks {
        super::check::record(vm, results);
    }
    let results = report.checks.as_deref().unwrap_or_default();
    let first = report.boot == Boot::First && report.cloud_init == CloudInitRun::Ran;
    if results.iter().all(|r| r.ok) && (first || !results.is_empty()) {
        on_event(&Event::ChecksPassed { checks: results.len() })?;
    }
    Ok(())
}

/// Waits for the report of the guest in `dom` (`name` for messages).
pub fn await_report(
    ctx: &Ctx,
    dom: &virt::domain::Domain,
    name: &str,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<ReadyReport> {
    await_inner(ctx, dom, name, timeout, progress, &mut |_| Ok(())).map(|(r, _)| r)
}

/// Which of the boot's one-time events were sent from stage lines.
#[derive(Debug, Default)]
struct Emitted {
    features: bool,
    application: bool,
}

fn await_inner(
    ctx: &Ctx,
    dom: &virt::domain::Domain,
    name: &str,
    timeout: Duration,
    progress: &Progress,
    on_event: OnEvent,
) -> anyhow::Result<(ReadyReport, Emitted)> {
    let uuid = dom.uuid_string().map_err(|e| crate::libvirt::explain(e, format!("reading {name}'s uuid")))?;
    let channel = Channel { conn: ctx.conn(), dom: dom.clone(), stream: None, buf: Vec::new() };
    let mut w = Waiter {
        ctx,
        name,
        uuid,
        channel,
        progress,
        t0: Instant::now(),
        lost: None,
        phase: "booting".into(),
        on_event,
        emitted: Emitted::default(),
    };
    progress.stage(name, "booting", "");
    // On tokio's clock: the channel (a non-blocking libvirt stream) is read
    // every 50 ms; libvirt is asked about the domain once a second.
    let report = crate::fanout::block_on(w.wait(timeout))?;
    Ok((report, w.emitted))
}

impl Waiter<'_> {
    async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ReadyReport> {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = Instant::now() - Duration::from_secs(10);
        loop {
            tick.tick().await;
            if let Some(report) = self.poll(&mut last_check, timeout)? {
                return Ok(report);
            }
        }
    }

    /// One look: a report if one came, an error if the wait is over.
    fn poll(&mut self, last_check: &mut Instant, timeout: Duration) -> anyhow::Result<Option<ReadyReport>> {
        let name = self.name;
        let w = self;
        interrupt::check()?;
        if let Some(report) = w.read_report()? {
            return Ok(Some(report));
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            *last_check = Instant::now();
            match w.lost {
                Some(_) => w.reconnect()?,
                None => w.check_domain()?,
            }
        }
        if w.t0.elapsed() >= timeout {
            let (vm, phase) = (name.to_owned(), w.phase.clone());
            return Err(super::Error::ReadyTimeout { vm, phase, after: timeout }.into());
        }
        w.progress.set_message(format!("{name}: {}", w.phase));
        Ok(None)
    }
}

/// One wait for a guest's report, across restarts of the daemon.
struct Waiter<'a> {
    ctx: &'a Ctx,
    name: &'a str,
    /// The domain's uuid, to find it again through a new connection.
    uuid: String,
    channel: Channel,
    progress: &'a Progress,
    t0: Instant,
    /// Since when the daemon has been gone (a restart under the wait).
    lost: Option<Instant>,
    /// How far the guest got, for messages.
    phase: String,
    on_event: OnEvent<'a>,
    emitted: Emitted,
}

impl Waiter<'_> {
    /// The guest's report, if a line of one has come; stage lines move the
    /// progress on (other lines are ignored).
    fn read_report(&mut self) -> anyhow::Result<Option<ReadyReport>> {
        while let Some(line) = self.lost.is_none().then(|| self.channel.poll_line()).flatten() {
            if let Some(stage) = StageLine::parse(&line) {
                self.on_stage(stage)?;
                continue;
            }
            let Some(msg) = Message::parse(&line) else {
                tracing::debug!(%line, "ignoring line on ready channel");
                continue;
            };
            let report = ReadyReport::of(self.name, msg, self.t0.elapsed().as_secs_f64());
            tracing::info!(vm = self.name, result = report.result, "guest reported readiness");
            return Ok(Some(report));
        }
        Ok(None)
    }

    /// A stage line: the progress line, and the events it marks.
    fn on_stage(&mut self, stage: StageLine) -> anyhow::Result<()> {
        self.phase = stage.describe();
        self.progress.stage(self.name, &stage.stage, &stage.detail);
        (self.on_event)(&Event::Stage(stage.clone()))?;
        match stage.stage.as_str() {
            "features-done" if !self.emitted.features => {
                self.emitted.features = true;
                (self.on_event)(&Event::FeaturesDone)
            }
            "application-done" if !self.emitted.application => {
                self.emitted.application = true;
                let exit = stage.detail.trim_start_matches("exit ").trim().parse().unwrap_or(-1);
                (self.on_event)(&Event::ApplicationDone { exit })
            }
            _ => Ok(()),
        }
    }

    /// The daemon went away: connect again once it answers, and find the
    /// same domain (by uuid) through the new connection.
    fn reconnect(&mut self) -> anyhow::Result<()> {
        let name = self.name;
        match self.ctx.reconnect().map(|c| (c.lookup_domain_by_uuid_string(&self.uuid), c)) {
            Ok((Ok(dom), conn)) => {
                crate::messages::note(format_args!(
                    "libvirt answers again at {}: still waiting for {name}",
                    self.ctx.uri
                ));
                self.progress.set_message(format!("{name}: {}", self.phase));
                self.channel.relink(conn, dom);
                self.lost = None;
            }
            Ok((Err(e), _)) if crate::libvirt::is(&e, virt::error::ErrorNumber::NoDomain) => {
                anyhow::bail!("{name} is gone: libvirt restarted under the wait and no longer has it");
            }
            Ok((Err(e), _)) => tracing::debug!("looking {name} up again: {}", e.message()),
            Err(e) => tracing::debug!("libvirt does not answer yet: {e:#}"),
        }
        Ok(())
    }

    /// The domain still runs (or the daemon, not the VM, went away), and
    /// how far its guest got.
    fn check_domain(&mut self) -> anyhow::Result<()> {
        let name = self.name;
        match self.channel.dom.is_active() {
            Ok(true) => {}
            Ok(false) => {
                anyhow::bail!("{name} stopped while waiting for it to become ready; see `project-vm logs {name}`")
            }
            // A restart of the daemon (a package upgrade, `nixos-rebuild
            // switch`) closes our connection, not the VM: wait for the
            // daemon rather than report the VM stopped.
            Err(_) if !self.channel.conn.is_alive().unwrap_or(false) => {
                crate::messages::warn(format_args!(
                    "lost the connection to libvirt at {} (the daemon restarted?): {name} keeps running; reconnecting",
                    self.ctx.uri
                ));
                self.progress.set_message(format!("{name}: {} (reconnecting to libvirt)", self.phase));
                self.lost = Some(Instant::now());
                return Ok(());
            }
            Err(e) => return Err(crate::libvirt::explain(e, format!("asking libvirt about {name}"))),
        }
        // The guest agent answering means userspace is up: cloud-init is running.
        if self.phase == "booting"
            && self.channel.dom.interface_addresses(sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0).is_ok()
        {
            self.phase = "cloud-init running".into();
            self.progress.stage(self.name, "cloud-init", "running");
        }
        Ok(())
    }
}

impl ReadyReport {
    /// The report of `name` from the guest's message, `waited` seconds in.
    pub fn of(name: &str, msg: Message, waited: f64) -> ReadyReport {
        ReadyReport {
            name: name.to_owned(),
            result: msg.result(),
            cloud_init_status: msg.status_word().into(),
            errors: msg.errors().into_iter().chain(msg.recoverable_errors()).collect(),
            waited_s: waited,
            report_latency_s: msg.report_latency(),
            boot: msg.boot(),
            cloud_init: msg.cloud_init_run(),
            checks: msg.check_results(),
            application: msg.application,
            boot_id: msg.boot_id,
        }
    }

    /// One line for people: how long it took, and how fast the guest told us.
    pub fn note(&self) -> String {
        let latency =
            self.report_latency_s.map(|l| format!(", reported {l:.2}s after cloud-init finished")).unwrap_or_default();
        let boot = match self.boot {
            Boot::First => "",
            Boot::Later => "later boot; ",
        };
        let cloud_init = match self.cloud_init {
            CloudInitRun::Ran => format!("cloud-init {}", self.cloud_init_status),
            CloudInitRun::Disabled => "cloud-init not re-run: disabled on this boot".into(),
            CloudInitRun::Absent => "cloud-init not re-run: not installed".into(),
        };
        format!("{}: ready ({boot}{cloud_init}{}) after {:.1}s{latency}", self.name, self.provisioned(), self.waited_s)
    }

    /// The note of a resumed VM's wait: the guest answered on the channel
    /// again, in the boot it was suspended in. (Its report is that boot's:
    /// how long after cloud-init it came says nothing about the resume.)
    pub fn note_resumed(&self) -> String {
        format!(
            "{}: answering again after {:.1}s (resumed, the same boot: cloud-init {}{})",
            self.name,
            self.waited_s,
            self.cloud_init_status,
            self.provisioned()
        )
    }

    /// `, application script ok, 2 checks passed`: what ran after cloud-init.
    fn provisioned(&self) -> String {
        let mut out = String::new();
        if let Some(app) = &self.application {
            out += &match app.exit {
                0 => ", application script ok".to_owned(),
                n => format!(", application script failed (exit {n})"),
            };
        }
        if let Some(checks) = self.checks.as_ref().filter(|c| !c.is_empty()) {
            let failed = checks.iter().filter(|c| !c.ok).count();
            out += &match failed {
                0 => format!(", {} check{} passed", checks.len(), if checks.len() == 1 { "" } else { "s" }),
                n => format!(", {n} of {} checks failed", checks.len()),
            };
        }
        out
    }
}

/// `start --wait` and friends: waits (with a spinner on a terminal) when
/// `timeout` is given.
pub fn wait_if(ctx: &Ctx, vm: &Vm, timeout: Option<Duration>) -> anyhow::Result<Option<ReadyReport>> {
    let Some(timeout) = timeout else { return Ok(None) };
    let progress = Progress::spinner(ctx.json, format!("{}: booting", vm.name));
    let report = wait(ctx, vm, timeout, &progress)?;
    progress.finish();
    Ok(Some(report))
}

/// Prints the readiness note on stderr (results go to stdout).
pub fn announce(ready: &Option<ReadyReport>) {
    if let Some(r) = ready {
        crate::messages::note(r.note());
    }
}

/// Turns a non-`done` report into the documented exit code.
pub fn check_opt(report: &Option<ReadyReport>) -> anyhow::Result<()> {
    report.as_ref().map_or(Ok(()), check)
}

/// cloud-init's verdict first (exit 5), then the application script's
/// (exit 5, with its last lines), then the checks' (exit 9, naming each
/// check that failed).
pub fn check(report: &ReadyReport) -> anyhow::Result<()> {
    if report.result != "done" {
        return Err(super::Error::CloudInit {
            vm: report.name.clone(),
            status: report.cloud_init_status.clone(),
            errors: report.errors.clone(),
        }
        .into());
    }
    if let Some(app) = report.application.as_ref().filter(|a| a.exit != 0) {
        return Err(super::Error::ApplicationFailed {
            vm: report.name.clone(),
            exit: app.exit,
            tail: app.tail.lines().map(str::to_owned).collect(),
        }
        .into());
    }
    super::check::verdict(&report.name, report.checks.as_deref().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(result: &str, status: &str) -> Message {
        Message::parse(&format!(
            r#"{{"project_vm_ready":2,"boot_id":"b","disabled":false,"result":{result},"status":{status},"sent_at":100.25}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_clean_run_is_done() {
        let m = msg(
            r#"{"v1":{"datasource":"DataSourceNoCloud","errors":[]}}"#,
            r#"{"v1":{"init":{"errors":[],"finished":90.0},"modules-final":{"errors":[],"finished":100.0,"start":95.0},"stage":null}}"#,
        );
        assert_eq!((m.status_word(), m.result()), ("done", "done"));
        assert_eq!(m.final_finished(), Some(100.0));
        assert_eq!(m.sent_at, Some(100.25));
    }

    #[test]
    fn latency_on_both_timestamp_styles() {
        // cloud-init 22.4: stage times are seconds since the epoch.
        let old = Message::parse(
            r#"{"project_vm_ready":2,"boot_id":"b","result":{"v1":{"errors":[]}},"status":{"v1":{"modules-final":{"errors":[],"finished":1763900000.5}}},"sent_at":1763900001.25,"uptime":40.0}"#,
        )
        .unwrap();
        assert_eq!(old.report_latency(), Some(0.75));
        // cloud-init 24+: seconds since boot; the epoch clock would say 1.8e9 s.
        let new = Message::parse(
            r#"{"project_vm_ready":2,"boot_id":"b","result":{"v1":{"errors":[]}},"status":{"v1":{"modules-final":{"errors":[],"finished":38.5}}},"sent_at":1763900001.25,"uptime":39.0}"#,
        )
        .unwrap();
        assert_eq!(new.report_latency(), Some(0.5));
        // A reporter from before the uptime field: no figure rather than a wrong one.
        let legacy = Message::parse(
            r#"{"project_vm_ready":2,"boot_id":"b","result":{"v1":{}},"status":{"v1":{"modules-final":{"finished":38.5}}},"sent_at":1763900001.25}"#,
        )
        .unwrap();
        assert_eq!(legacy.report_latency(), None);
    }

    #[test]
    fn a_failed_runcmd_is_an_error_naming_the_module() {
        let m = msg(
            r#"{"v1":{"errors":["('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"]}}"#,
            r#"{"v1":{"modules-final":{"errors":["('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"],"finished":1.0}}}"#,
        );
        assert_eq!(m.result(), "error");
        assert_eq!(m.errors().len(), 1, "deduplicated: {:?}", m.errors());
        assert!(m.errors()[0].contains("scripts_user"));
    }

    #[test]
    fn recoverable_errors_are_degraded() {
        let m = msg(
            r#"{"v1":{"errors":[]}}"#,
            r#"{"v1":{"init":{"errors":[],"recoverable_errors":{"WARNING":["Failed to set locale"]}}}}"#,
        );
        assert_eq!((m.status_word(), m.result()), ("degraded done", "degraded"));
        assert_eq!(m.recoverable_errors(), vec!["init: WARNING: Failed to set locale"]);
    }

    #[test]
    fn schema_findings_say_what_failed() {
        let m = Message::parse(
            r#"{"project_vm_ready":2,"boot_id":"b","result":{"v1":{"errors":[]}},"status":{"v1":{"init":{"errors":[],"recoverable_errors":{"WARNING":["cloud-config failed schema validation! You may run 'sudo cloud-init schema --system' to check the details."]}}}},"schema":"Found cloud-config data types: user-data\n\n1. user-data at /var/lib/cloud/instances/i/cloud-config.txt:\n  Invalid user-data /var/lib/cloud/instances/i/cloud-config.txt\n  Error: Cloud config schema errors: manual_cache_clean: Additional properties are not allowed ('manual_cache_clean' was unexpected)\n\nError: Invalid schema: user-data\n"}"#,
        )
        .unwrap();
        assert_eq!(m.result(), "degraded");
        let errs = m.recoverable_errors();
        assert!(errs.iter().any(|e| e.contains("manual_cache_clean: Additional properties")), "{errs:?}");
        assert!(errs.iter().all(|e| !e.ends_with("Error:")), "{errs:?}");
    }

    #[test]
    fn odd_lines_are_ignored_or_tolerated() {
        assert!(Message::parse("garbage").is_none());
        assert!(Message::parse(r#"{"status":"done"}"#).is_none(), "not ours");
        let m = Message::parse(
            r#"{"project_vm_ready":2,"boot_id":"b","disabled":true,"result":null,"status":null,"sent_at":1}"#,
        )
        .unwrap();
        assert_eq!((m.status_word(), m.result()), ("disabled", "done"));
    }

    #[test]
    fn a_later_boot_says_so_and_whether_cloud_init_ran() {
        // The first boot: its first report is from this boot.
        let first = Message::parse(
            r#"{"project_vm_ready":3,"boot_id":"b1","first_boot_id":"b1","cloud_init":"ran","disabled":false,"result":{"v1":{"errors":[]}},"status":{"v1":{"modules-final":{"errors":[],"finished":38.5}}},"schema":null,"sent_at":1763900001.25,"uptime":39.0}"#,
        )
        .unwrap();
        assert_eq!((first.boot(), first.cloud_init_run(), first.result()), (Boot::First, CloudInitRun::Ran, "done"));
        // A later boot on which ds-identify disabled cloud-init: done, nothing to wait for.
        let later = Message::parse(
            r#"{"project_vm_ready":3,"boot_id":"b2","first_boot_id":"b1","cloud_init":"disabled","disabled":true,"result":null,"status":null,"schema":null,"sent_at":1763900100.0,"uptime":9.5}"#,
        )
        .unwrap();
        assert_eq!((later.boot(), later.cloud_init_run()), (Boot::Later, CloudInitRun::Disabled));
        assert_eq!((later.status_word(), later.result(), later.report_latency()), ("disabled", "done", None));
        let absent = Message::parse(
            r#"{"project_vm_ready":3,"boot_id":"b3","first_boot_id":"b1","cloud_init":"absent","disabled":true,"result":null,"status":null,"schema":null,"sent_at":1,"uptime":1}"#,
        )
        .unwrap();
        assert_eq!((absent.boot(), absent.status_word(), absent.result()), (Boot::Later, "absent", "done"));
        // A version-2 reporter (VMs made before): no boot ids, `disabled` only.
        let old = Message::parse(r#"{"project_vm_ready":2,"boot_id":"b","disabled":true,"result":null,"status":null}"#)
            .unwrap();
        assert_eq!((old.boot(), old.cloud_init_run()), (Boot::First, CloudInitRun::Disabled));
    }

    #[test]
    fn the_note_names_a_later_boot() {
        let mut r = ReadyReport {
            name: "foo".into(),
            result: "done",
            cloud_init_status: "disabled".into(),
            errors: vec![],
            waited_s: 9.14,
            report_latency_s: None,
            boot_id: "b2".into(),
            boot: Boot::Later,
            cloud_init: CloudInitRun::Disabled,
            application: None,
            checks: None,
        };
        assert_eq!(r.note(), "foo: ready (later boot; cloud-init not re-run: disabled on this boot) after 9.1s");
        r.cloud_init = CloudInitRun::Ran;
        r.cloud_init_status = "done".into();
        assert_eq!(r.note(), "foo: ready (later boot; cloud-init done) after 9.1s");
        r.boot = Boot::First;
        assert_eq!(r.note(), "foo: ready (cloud-init done) after 9.1s");
        r.application = Some(Application { exit: 0, tail: String::new() });
        let pass =
            CheckResult { name: "web".into(), ok: true, exit: 0, attempts: 1, elapsed_s: 0.1, output: String::new() };
        r.checks = Some(vec![pass.clone()]);
        assert_eq!(r.note(), "foo: ready (cloud-init done, application script ok, 1 check passed) after 9.1s");
        r.checks = Some(vec![pass.clone(), CheckResult { ok: false, ..pass }]);
        assert_eq!(r.note(), "foo: ready (cloud-init done, application script ok, 1 of 2 checks failed) after 9.1s");
        // A resume's report is the first boot's: its latency after cloud-init is not said.
        r.report_latency_s = Some(7.6);
        assert!(r.note().contains("reported 7.60s after cloud-init finished"));
        // It still says how that boot's provisioning went (a check may have failed).
        assert_eq!(
            r.note_resumed(),
            "foo: answering again after 9.1s (resumed, the same boot: cloud-init done, application script ok, 1 of 2 checks failed)"
        );
    }

    #[test]
    fn failure_names_the_module() {
        let r = ReadyReport {
            name: "foo".into(),
            result: "error",
            cloud_init_status: "error".into(),
            errors: vec!["('scripts_user', RuntimeError('Runparts: 1 failures'))".into()],
            waited_s: 1.0,
            report_latency_s: None,
            boot_id: "b".into(),
            boot: Boot::First,
            cloud_init: CloudInitRun::Ran,
            application: None,
            checks: None,
        };
        let e = check(&r).unwrap_err();
        let Some(super::super::Error::CloudInit { vm, status, errors }) = e.downcast_ref() else { panic!("{e:#}") };
        assert_eq!((vm.as_str(), status.as_str(), errors.len()), ("foo", "error", 1));
        assert_eq!(crate::exit::code(&e), 5);
        assert!(e.to_string().contains("scripts_user"));
        assert!(
            e.to_string().starts_with("cloud-init in foo finished with status \"error\"\n  ('scripts_user'"),
            "{e}"
        );
    }

    fn first_boot_report(application: Option<Application>, checks: Option<Vec<CheckResult>>) -> ReadyReport {
        let line = r#"{"project_vm_ready":3,"boot_id":"b1","first_boot_id":"b1","cloud_init":"ran","disabled":false,"result":{"v1":{"errors":[]}},"status":{"v1":{"modules-final":{"errors":[],"finished":38.5}}},"schema":null,"sent_at":1,"uptime":39.0}"#;
        ReadyReport { application, checks, ..ReadyReport::of("web", Message::parse(line).unwrap(), 1.0) }
    }

    #[test]
    fn version_4_carries_the_application_and_the_checks_and_older_ones_neither() {
        let v4 = Message::parse(
            r#"{"project_vm_ready":4,"boot_id":"b1","first_boot_id":"b1","cloud_init":"ran","disabled":false,"result":{"v1":{"errors":[]}},"status":{"v1":{}},"schema":null,"application":{"exit":3,"tail":"line 1\nno such file"},"checks":[{"project_vm_check":1,"name":"web","ok":false,"exit":7,"attempts":11,"started":1.5,"finished":21.5,"output":"refused"}],"sent_at":1,"uptime":2}"#,
        )
        .unwrap();
        assert_eq!(v4.application, Some(Application { exit: 3, tail: "line 1\nno such file".into() }));
        let checks = v4.check_results().unwrap();
        assert_eq!((checks[0].name.as_str(), checks[0].ok, checks[0].elapsed_s), ("web", false, 20.0));
        let report = ReadyReport::of("web", v4, 1.0);
        assert_eq!(report.result, "done", "cloud-init itself was fine");
        // A version-4 reporter whose guest ran neither (no script, no checks, a later boot).
        let none = Message::parse(
            r#"{"project_vm_ready":4,"boot_id":"b2","first_boot_id":"b1","cloud_init":"disabled","disabled":true,"result":null,"status":null,"schema":null,"application":null,"checks":null,"sent_at":1,"uptime":2}"#,
        )
        .unwrap();
        assert_eq!((none.application.clone(), none.check_results()), (None, None));
        // Versions 2 and 3 parse as before, with neither.
        let v2 = Message::parse(r#"{"project_vm_ready":2,"boot_id":"b","disabled":true,"result":null,"status":null}"#)
            .unwrap();
        assert_eq!((v2.application.clone(), v2.check_results()), (None, None));
        let v3 = first_boot_report(None, None);
        assert!(check(&v3).is_ok());
        let json = serde_json::to_value(&v3).unwrap();
        assert!(json.get("application").is_none() && json.get("checks").is_none(), "{json}");
    }

    #[test]
    fn a_failed_application_script_is_exit_5_with_its_last_lines() {
        let r = first_boot_report(Some(Application { exit: 3, tail: "installing\nE: no such package".into() }), None);
        let e = check(&r).unwrap_err();
        assert_eq!(crate::exit::code(&e), 5);
        match e.downcast_ref::<super::super::Error>() {
            Some(super::super::Error::ApplicationFailed { vm, exit, tail }) => {
                assert_eq!((vm.as_str(), *exit, tail.len()), ("web", 3, 2))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string().starts_with(
                "the application script in web exited with status 3\n  | installing\n  | E: no such package"
            ),
            "{e}"
        );
        // A script that passed is no failure.
        assert!(check(&first_boot_report(Some(Application { exit: 0, tail: String::new() }), None)).is_ok());
    }

    #[test]
    fn a_failed_check_is_exit_9_naming_it_and_cloud_init_comes_first() {
        let failed = CheckResult {
            name: "web".into(),
            ok: false,
            exit: 7,
            attempts: 11,
            elapsed_s: 20.0,
            output: "refused".into(),
        };
        let r = first_boot_report(Some(Application { exit: 0, tail: String::new() }), Some(vec![failed]));
        let e = check(&r).unwrap_err();
        assert_eq!(crate::exit::code(&e), 9);
        assert!(
            matches!(e.downcast_ref(), Some(super::super::Error::CheckFailed { failed, .. }) if failed == &["web"])
        );
        let broken = ReadyReport { result: "error", cloud_init_status: "error".into(), ..r };
        assert_eq!(crate::exit::code(&check(&broken).unwrap_err()), 5);
    }

    #[test]
    fn stage_lines_parse_and_say_where_the_guest_is() {
        let s = StageLine::parse(
            r#"{"project_vm_stage":1,"stage":"cloud-init","detail":"modules-final: scripts_user","uptime":40.1}"#,
        )
        .unwrap();
        assert_eq!(s.describe(), "cloud-init modules-final: scripts_user");
        assert!(Message::parse(r#"{"project_vm_stage":1,"stage":"check","detail":"web"}"#).is_none(), "not a report");
        assert!(StageLine::parse(r#"{"project_vm_ready":4,"boot_id":"b"}"#).is_none(), "not a stage");
        assert_eq!(
            StageLine::parse(r#"{"project_vm_stage":1,"stage":"features-done"}"#).unwrap().describe(),
            "features done"
        );
    }

    #[test]
    fn the_report_brings_the_events_its_stage_lines_did_not() {
        let r = first_boot_report(Some(Application { exit: 0, tail: String::new() }), None);
        let mut got = Vec::new();
        report_events(&r, &mut Emitted::default(), &mut |e| {
            got.push(e.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![Event::FeaturesDone, Event::ApplicationDone { exit: 0 }]);
        got.clear();
        report_events(&r, &mut Emitted { features: true, application: true }, &mut |e| {
            got.push(e.clone());
            Ok(())
        })
        .unwrap();
        assert!(got.is_empty(), "each once: {got:?}");
        let later = ReadyReport { boot: Boot::Later, application: None, ..r };
        report_events(&later, &mut Emitted::default(), &mut |e| {
            got.push(e.clone());
            Ok(())
        })
        .unwrap();
        assert!(got.is_empty(), "a later boot provisions nothing: {got:?}");
    }
}
