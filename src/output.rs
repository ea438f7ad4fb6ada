//! Printing reports: JSON with `--json`, otherwise plain text for people.
//! Every report is a [`Report`]: serialisable for JSON, and able to write
//! itself for people. Notes about progress go to stderr, results to stdout.

use std::io::{self, Write};

use serde::Serialize;

pub trait Report: Serialize {
    /// Plain text for people, to stdout.
    fn human(&self, out: &mut dyn Write) -> io::Result<()>;
}

/// Prints `report` to stdout as JSON or as text. A closed pipe
/// (`project-vm list | head -1`) comes back as an error that `main` treats
/// as a normal end.
pub fn emit<R: Report>(json: bool, report: &R) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
    } else {
        report.human(&mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// True when `err` is only a closed stdout: the reader went away, and that
/// is not a failure of ours.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<serde_json::Error>().and_then(|e| e.io_error_kind()) == Some(io::ErrorKind::BrokenPipe)
    })
}

/// Left-aligned columns, two spaces apart.
pub fn table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| -> io::Result<()> {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        writeln!(out, "{}", s.join("  ").trim_end())
    };
    line(headers.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// Bytes in binary units, one decimal.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(1 << 30), "1G");
        assert_eq!(human(1536 << 20), "1.5G");
        assert_eq!(human(196_624), "192.0K");
    }

    /// A writer whose reader has gone away.
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_recognised_through_any_wrapping() {
        let e: anyhow::Error = table(&mut Closed, &["A"], &[]).unwrap_err().into();
        assert!(is_broken_pipe(&e.context("listing")));
        let e: anyhow::Error = serde_json::to_writer(&mut Closed, &[1, 2]).unwrap_err().into();
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
