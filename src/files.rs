//! Every file project-vm reads from disk, read the one bounded way: opened
//! without blocking (a FIFO or a device never hangs the open), refused
//! unless it is a regular file, and refused above a limit that fits what
//! the file is for. Refusals are bad input (exit 2) naming the file.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::error::ConfigError;

/// Settings files, declarative files: far larger than any real one.
pub const CONFIG_MAX: u64 = 4 << 20;
/// A user's cloud-config (the seed carries it whole).
pub const USER_DATA_MAX: u64 = 1 << 20;
/// A key, a public key, a token.
pub const KEY_MAX: u64 = 64 << 10;
/// A checksum list.
pub const SUMS_MAX: u64 = 4 << 20;

/// Opens `path` for reading as a regular file without blocking, whatever it
/// turns out to be; `what` names it in messages ("user-data file").
pub fn open_regular(path: &Path, what: &str) -> anyhow::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO with no writer would block this open forever; a regular file ignores the flag.
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| ConfigError::invalid(format!("cannot read {what} {}: {e}", path.display())))?;
    let meta =
        file.metadata().map_err(|e| ConfigError::invalid(format!("cannot read {what} {}: {e}", path.display())))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let is = match () {
            _ if kind.is_dir() => "a directory",
            _ if kind.is_fifo() => "a FIFO",
            _ if kind.is_char_device() => "a character device",
            _ if kind.is_block_device() => "a block device",
            _ if kind.is_socket() => "a socket",
            _ => "not a regular file",
        };
        return Err(ConfigError::invalid(format!("{what} {} is {is}, not a regular file", path.display())));
    }
    // Back to blocking reads (regular files never block, but say what we mean).
    let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()));
    Ok(file)
}

/// The whole of a regular file of at most `max` bytes, as bytes.
pub fn read_bounded(path: &Path, what: &str, max: u64) -> anyhow::Result<Vec<u8>> {
    let file = open_regular(path, what)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let too_big = |n: u64| {
        ConfigError::invalid(format!(
            "{what} {} is {n} bytes, over the limit of {} for a {what}",
            path.display(),
            crate::output::human(max)
        ))
    };
    if len > max {
        return Err(too_big(len));
    }
    let mut out = Vec::with_capacity(len as usize);
    // Bounded even if the file grows while it is read.
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| ConfigError::invalid(format!("cannot read {what} {}: {e}", path.display())))?;
    if out.len() as u64 > max {
        return Err(too_big(out.len() as u64));
    }
    Ok(out)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text(path: &Path, what: &str, max: u64) -> anyhow::Result<String> {
    String::from_utf8(read_bounded(path, what, max)?)
        .map_err(|_| ConfigError::invalid(format!("{what} {} is not UTF-8 text", path.display())))
}

/// Makes a new file, mode 0600, that was not there before: never through a
/// symlink, never an existing file (a planted name makes this fail instead).
pub fn create_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_text(&f, "test file", 5).unwrap(), "hello");
        let e = read_text(&f, "test file", 4).unwrap_err();
        assert_eq!(crate::exit::code(&e), 2);
        assert!(e.to_string().contains("over the limit"), "{e}");
        let e = read_text(Path::new("/dev/zero"), "user-data file", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("/dev/zero is a character device"), "{e}");
        let e = read_text(dir.path(), "config file", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        // A FIFO nobody writes to: refused at once, never a blocked open.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let t0 = std::time::Instant::now();
        let e = read_text(&fifo, "plan file", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        let e = read_text(&dir.path().join("missing"), "key file", 10).unwrap_err();
        assert_eq!(crate::exit::code(&e), 2);
    }
}
