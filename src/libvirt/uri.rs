//! A syntax check of libvirt connection URIs, so a malformed `--connect` or
//! `"uri"` is bad input (exit 2) named as such, not a daemon that "cannot be
//! reached" (exit 4). It checks the shape only: whether that daemon answers
//! is the connection's business.

/// The drivers libvirt's URIs name.
const DRIVERS: &[&str] = &[
    "qemu",
    "test",
    "lxc",
    "xen",
    "libxl",
    "vbox",
    "vmwareplayer",
    "vmwarews",
    "vmwarefusion",
    "esx",
    "gsx",
    "vpx",
    "hyperv",
    "openvz",
    "bhyve",
    "ch",
    "vz",
    "parallels",
    "remote",
    "network",
    "nodedev",
    "nwfilter",
    "secret",
    "storage",
    "interface",
];
const TRANSPORTS: &[&str] = &["unix", "ssh", "tcp", "tls", "libssh", "libssh2", "ext"];

/// `Ok` when `uri` is shaped like a libvirt URI (or an alias name from
/// libvirt.conf); else why not.
pub fn check(uri: &str) -> Result<(), String> {
    let bad = |why: String| {
        Err(format!("{uri:?} is not a libvirt URI: {why} (e.g. qemu:///system, qemu+ssh://root@host/system)"))
    };
    if uri.is_empty() {
        return bad("it is empty".into());
    }
    if let Some(c) = uri.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return bad(format!("it contains {c:?}"));
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        // An alias defined in libvirt.conf (uri_aliases): letters, digits, `_-.`.
        if uri.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            return Ok(());
        }
        return bad("no scheme, and not an alias name".into());
    };
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    if !DRIVERS.contains(&driver) {
        return bad(format!("{driver:?} is not a libvirt driver"));
    }
    if let Some(t) = transport {
        if !TRANSPORTS.contains(&t) {
            return bad(format!("transport {t:?} is not one of {}", TRANSPORTS.join(", ")));
        }
    }
    let Some(rest) = rest.strip_prefix("//") else {
        return bad("the scheme must be followed by // (three slashes for a local daemon)".into());
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    if before_query.contains('#') || query.is_some_and(|q| q.contains('#')) {
        return bad("it has a fragment (#)".into());
    }
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let host_port = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let port = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((_, after)) = v6.split_once(']') else { return bad("an IPv6 address without its closing ]".into()) };
        after.strip_prefix(':')
    } else {
        if host_port.contains(['[', ']']) {
            return bad("brackets outside an IPv6 address".into());
        }
        host_port.split_once(':').map(|(_, p)| p)
    };
    if let Some(p) = port {
        if p.is_empty() || p.parse::<u16>().is_err() {
            return bad(format!("port {p:?} is not a number up to 65535"));
        }
    }
    for part in [path, query.unwrap_or("")] {
        let b = part.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                if hex.is_none() {
                    return bad("a % not followed by two hex digits".into());
                }
                i += 2;
            }
            i += 1;
        }
    }
    if driver == "qemu" && !matches!(path, "/system" | "/session" | "/embed") {
        return bad(format!("a qemu URI's path is /system or /session, not {path:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn libvirt_uris_pass_and_malformed_ones_say_why() {
        for ok in [
            "qemu:///system",
            "qemu:///session",
            "qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock",
            "qemu+ssh://root@host/system",
            "qemu+ssh://root@host:2222/system?keyfile=/k&no_verify=1",
            "qemu+tcp://[::1]:16509/system",
            "test:///default",
            "test:///tmp/node.xml",
            "myalias",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (badu, says) in [
            ("", "empty"),
            ("not a uri", "contains"),
            ("::", "not a libvirt driver"),
            ("http://x/", "not a libvirt driver"),
            ("qemu+bogus:///system", "transport"),
            ("qemu:/system", "followed by //"),
            ("qemu:///x", "path"),
            ("qemu:///system?socket=%zz", "hex"),
            ("qemu+tcp://[::1/system", "closing ]"),
            ("qemu+ssh://h:99999/system", "port"),
            ("qemu+ssh://h:/system", "port"),
        ] {
            let e = check(badu).expect_err(badu);
            assert!(e.contains(says), "{badu}: {e}");
        }
    }
}
