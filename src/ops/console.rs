//! `console`: the serial console through libvirt (works over remote URIs too).
//! Ctrl-] leaves, as in virsh.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg};
use virt::stream::Stream;

use super::Ctx;
use crate::libvirt::explain;
use crate::libvirt::vms::{State, Vm};

const ESCAPE: u8 = 0x1d; // Ctrl-]

pub fn console(ctx: &Ctx, vm: &Vm) -> anyhow::Result<()> {
    if vm.state() != State::Running {
        return Err(super::Error::NotRunning { vm: vm.name.to_string(), state: vm.state().as_str().to_owned() }.into());
    }
    let stream = Stream::new(&ctx.conn(), 0).map_err(|e| explain(e, "opening stream"))?;
    vm.dom.open_console(None, &stream, 0).map_err(|e| explain(e, format!("opening the console of {}", vm.name)))?;
    crate::messages::note(format!("Connected to the console of {} (Ctrl-] to leave)", vm.name));

    let stdin = std::io::stdin();
    let saved = if stdin.is_terminal() {
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Some(saved)
    } else {
        None
    };
    let stream = std::sync::Arc::new(stream);
    let reader = stream.clone();
    // On tokio's blocking pool, detached: it ends with the process (or when
    // libvirt closes the stream).
    crate::fanout::runtime().spawn_blocking(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.recv(&mut buf) {
            if n <= 0 {
                break;
            }
            let _ = out.write_all(&buf[..n as usize]);
            let _ = out.flush();
        }
    });
    let result = (|| {
        let mut buf = [0u8; 1024];
        let mut input = stdin.lock();
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if let Some(pos) = buf[..n].iter().position(|&b| b == ESCAPE) {
                let _ = stream.send(&buf[..pos]);
                break;
            }
            if stream.send(&buf[..n]).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    })();
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &saved);
    }
    // The guest's last line may not have ended: the shell's prompt starts on a new one.
    crate::messages::note("");
    result
}
