//! `logs`: the serial console log libvirt's virtlogd writes on the host.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::Ctx;
use crate::error::{failure, Kind};
use crate::libvirt::vms::Vm;

pub fn path(vm: &Vm) -> PathBuf {
    PathBuf::from(format!("/var/log/libvirt/qemu/{}-serial.log", vm.name.domain()))
}

pub fn logs(ctx: &Ctx, vm: &Vm, follow: bool) -> anyhow::Result<()> {
    if !ctx.is_system() || !ctx.is_local() {
        return Err(failure(
            Kind::Environment,
            format!(
                "the serial log is kept on the libvirt host for qemu:///system VMs only; on {} use `project-vm console {}`",
                ctx.uri, vm.name
            ),
        ));
    }
    let path = path(vm);
    if !path.exists() {
        return Err(failure(
            Kind::NotFound,
            format!("no serial log at {}: has {} been started since it was created?", path.display(), vm.name),
        ));
    }
    // Streamed, never held whole; opened without blocking and only if it is a regular file.
    let mut file = crate::files::open_regular(&path, "serial log")?;
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
