//! The man page, made from `crate::cli`'s definitions (`project-vm man`).

use std::io::{self, Write};

/// Writes the man page to stdout: clap's page of the whole command, then a
/// section per subcommand (`project-vm image pull` too), each with its
/// synopsis and options, all made from `crate::cli`'s definitions.
pub fn man_page() -> anyhow::Result<()> {
    let mut buf = Vec::new();
    write_man_page(&mut buf)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// The man page (roff) into `out`.
pub fn write_man_page(out: &mut dyn Write) -> io::Result<()> {
    let mut root = <crate::cli::Cli as clap::CommandFactory>::command();
    root.build();
    clap_mangen::Man::new(root.clone()).render(out)?;
    writeln!(out, ".SH \"COMMANDS IN DETAIL\"")?;
    for sub in root.get_subcommands().filter(|c| !c.is_hide_set()) {
        command_sections(out, sub)?;
    }
    Ok(())
}

/// One subcommand's part of the page, its own subcommands after it.
fn command_sections(out: &mut dyn Write, cmd: &clap::Command) -> io::Result<()> {
    let name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name()).to_owned();
    writeln!(out, ".SS \"{name}\"")?;
    let mut part = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_description_section(&mut part)?;
    man.render_synopsis_section(&mut part)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut part)?;
    }
    // Inside this subcommand's section: its parts are paragraphs, not sections.
    let part = String::from_utf8_lossy(&part).replace(".SH ", ".TP\n.B ");
    out.write_all(part.as_bytes())?;
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        command_sections(out, sub)?;
    }
    Ok(())
}
