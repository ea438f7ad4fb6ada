//! `logs`: the serial console log libvirt's virtlogd writes on the host:
//! libvirt's log directory for the system daemon, the user's state directory
//! (`~/.local/state/project-vm/logs`) for a session daemon. The path is the
//! one the VM's definition names, so a VM keeps its log where it was made.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::{Ctx, Error};
use crate::libvirt::vms::Vm;

/// The serial log file the VM's definition names, if any.
pub fn configured_path(vm: &Vm) -> Option<PathBuf> {
    let xml = vm.dom.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).ok()?;
    serial_log_in(&xml).map(PathBuf::from)
}

/// The file of the `<log>` of the domain's first `<serial>` device
/// (`<domain><devices><serial type=...><log file='...'/>`), read as XML:
/// a disk's `<serial>` (its serial number) or a console's log is not it.
fn serial_log_in(xml: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    loop {
        let (e, empty) = match reader.read_event().ok()? {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                path.pop();
                continue;
            }
            Event::Eof => return None,
            _ => continue,
        };
        let name = e.name().into_inner().to_owned();
        if name == "log" && path.iter().map(String::as_str).eq(["domain", "devices", "serial"]) {
            let file = e.try_get_attribute("file").ok()??;
            return quick_xml::escape::unescape(&file.value).ok().map(|v| v.into_owned());
        }
        if !empty {
            path.push(name);
        }
    }
}

pub fn logs(ctx: &Ctx, vm: &Vm, follow: bool) -> anyhow::Result<()> {
    if !ctx.is_local() {
        return Err(Error::Environment(format!(
            "the serial log is a file on the libvirt host ({}), not readable from here: use `project-vm console {}`",
            ctx.uri, vm.name
        ))
        .into());
    }
    let Some(path) = configured_path(vm) else {
        return Err(Error::NoSerialLog(format!(
            "{} keeps no serial log (it was made without one, by an older project-vm or for a daemon whose user's home is not known here): use `project-vm console {}`",
            vm.name, vm.name
        ))
        .into());
    };
    // Opened only if it is a regular file (a FIFO or a device there would block or never end).
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        return Err(Error::Invalid(format!("{} is not a regular file: not a serial log", path.display())).into());
    }
    let mut file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::Environment(format!(
            "cannot read the serial log {} ({e}): {} writes it for its own user; read it as that user (root for qemu:///system), or use `project-vm console {}`",
            path.display(),
            ctx.settings.daemon.describe(),
            vm.name
        )),
        _ => Error::NoSerialLog(format!(
            "no serial log at {} ({e}): has {} been started since it was created?",
            path.display(),
            vm.name
        )),
    })?;
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        if !follow {
            return Ok(());
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
        // The log may have been rotated or truncated (a new boot with append off).
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < file.stream_position()? {
            file.seek(SeekFrom::Start(0))?;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_serial_log_is_read_from_the_definition() {
        let xml = "<domain><devices><disk><serial>project-data</serial></disk><console type='pty'><log file='/nope'/></console>\
                   <serial type='pty'><target port='0'/><log file='/home/a/.local/state/project-vm/logs/project-x-serial.log' append='on'/></serial></devices></domain>";
        assert_eq!(
            super::serial_log_in(xml).as_deref(),
            Some("/home/a/.local/state/project-vm/logs/project-x-serial.log")
        );
        assert_eq!(super::serial_log_in("<domain><devices><serial type='pty'/></devices></domain>"), None);
        // Quoted either way, with entities; a log inside something else is not the serial's.
        assert_eq!(
            super::serial_log_in(
                "<domain><devices><serial type=\"pty\"><log file=\"/a&amp;b.log\"/></serial></devices></domain>"
            )
            .as_deref(),
            Some("/a&b.log")
        );
        assert_eq!(
            super::serial_log_in(
                "<domain><devices><serial type='pty'><source><log file='/nope'/></source></serial></devices></domain>"
            ),
            None
        );
    }
}
