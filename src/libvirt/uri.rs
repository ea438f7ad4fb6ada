//! libvirt connection URIs, parsed: `driver[+transport]://[user@][host][:port]/path[?query]`.
//!
//! What kind of daemon a URI reaches decides project-vm's defaults (where
//! disks live, how guests are networked), so it is decided here, in one place,
//! from the parsed parts and never from the string's ending: `qemu+unix:///session?socket=...`
//! is a session URI, and so is `qemu:///session`; `qemu:///system` and
//! `qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock` are the system daemon.
//!
//! See <https://libvirt.org/uri.html> for the format.

use std::fmt;

/// A parsed libvirt URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// The hypervisor driver: `qemu`, `test`, `lxc`, ...
    pub driver: String,
    /// `unix`, `ssh`, `libssh`, `libssh2`, `tcp`, `tls`, `ext`; `None` when not written.
    pub transport: Option<String>,
    pub user: Option<String>,
    /// `None` (or empty) for this machine.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `/system`, `/session`, `/default`, `/embed`, ...
    pub path: String,
    /// The query's parameters in order, percent-decoded.
    pub query: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri:?} is not a libvirt URI ({why}); expected e.g. qemu:///system, qemu:///session or qemu+ssh://user@host/system")]
pub struct UriError {
    pub uri: String,
    pub why: &'static str,
}

/// Which kind of daemon a URI asks for, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `/system`: the privileged daemon; VMs run as the QEMU user (libvirt-qemu or qemu).
    System,
    /// `/session`: a per-user daemon; VMs run as that user.
    Session,
    /// Anything else: `test:///default`, `qemu:///embed?root=...`, other drivers' paths.
    Other,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

impl Uri {
    pub fn parse(uri: &str) -> Result<Uri, UriError> {
        let err = |why| UriError { uri: uri.to_owned(), why };
        let (scheme, rest) = uri.split_once("://").ok_or(err("no \"://\""))?;
        let (driver, transport) = scheme_parts(scheme).map_err(err)?;
        let (authority, path, query) = rest_parts(rest);
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(decode(u)), h),
            None => (None, authority),
        };
        let (host, port) = host_and_port(host_port).map_err(err)?;
        Ok(Uri {
            driver: driver.to_owned(),
            transport: transport.map(str::to_owned),
            user: user.filter(|u| !u.is_empty()),
            host: (!host.is_empty()).then(|| decode(host)),
            port,
            path: decode(path),
            query: query_pairs(query),
        })
    }

    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn mode(&self) -> Mode {
        match self.path.trim_end_matches('/') {
            "/system" => Mode::System,
            "/session" => Mode::Session,
            _ => Mode::Other,
        }
    }

    /// True when the daemon is on this machine: no host, and a local
    /// transport (none, `unix`; `ext` runs a command on this machine but may
    /// reach anywhere, so it counts as remote).
    pub fn is_local(&self) -> bool {
        let host_local = match self.host.as_deref() {
            None => true,
            Some(h) => h == "localhost" && self.transport.is_none(),
        };
        host_local && matches!(self.transport.as_deref(), None | Some("unix"))
    }

    /// True for transports that go through ssh (`ssh`, `libssh`, `libssh2`).
    pub fn is_ssh(&self) -> bool {
        matches!(self.transport.as_deref(), Some("ssh" | "libssh" | "libssh2"))
    }

    /// libvirt's built-in test driver (`test:///default`, `test:///path.xml`):
    /// no daemon, no files, no streams.
    pub fn is_test(&self) -> bool {
        self.driver == "test"
    }

    /// `socket=`: a unix socket given explicitly, on this machine.
    pub fn socket(&self) -> Option<&str> {
        self.param("socket").filter(|s| !s.is_empty())
    }
}

/// True when `uri` (as given: a URI or an alias) reaches a daemon on this
/// machine. An alias from libvirt.conf counts as local, as libvirt's own
/// default does; anything else that does not parse does not.
pub fn is_local(uri: &str) -> bool {
    match Uri::parse(uri) {
        Ok(u) => u.is_local(),
        Err(_) => !uri.is_empty() && check_alias(uri).is_ok(),
    }
}

/// True when `uri` names libvirt's test driver.
pub fn is_test(uri: &str) -> bool {
    Uri::parse(uri).is_ok_and(|u| u.is_test())
}

// The phases of [`Uri::parse`], in reading order.

/// `driver[+transport]`, each checked.
fn scheme_parts(scheme: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    if driver.is_empty() || !driver.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("no driver before \"://\"");
    }
    if transport.is_some_and(|t| t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric())) {
        return Err("an empty or odd transport after '+'");
    }
    Ok((driver, transport))
}

/// What follows `://`: authority, path and query (a fragment, which libvirt
/// URIs do not have, is dropped).
fn rest_parts(rest: &str) -> (&str, &str, &str) {
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (authority, path, query)
}

/// `host:port`, `[v6]:port`, `[v6]`, `host`; the port a number from 1.
fn host_and_port(host_port: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an IPv6 address without ']'")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("text after an IPv6 address"),
        };
        (h, port)
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return Err("port 0, which no daemon listens on"),
            Ok(n) => Some(n),
            Err(_) => return Err("a port that is not a number"),
        },
    };
    Ok((host, port))
}

/// The query's `key=value` pairs in order, percent-decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

impl fmt::Display for Uri {
    /// The URI as libvirt would read it (query values re-encoded).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
        const QUERY: &AsciiSet = &CONTROLS.add(b' ').add(b'&').add(b'=').add(b'#').add(b'%').add(b'+');
        write!(f, "{}", self.driver)?;
        if let Some(t) = &self.transport {
            write!(f, "+{t}")?;
        }
        f.write_str("://")?;
        if let Some(u) = &self.user {
            write!(f, "{}@", utf8_percent_encode(u, QUERY))?;
        }
        match self.host.as_deref() {
            Some(h) if h.contains(':') => write!(f, "[{h}]")?,
            Some(h) => f.write_str(h)?,
            None => {}
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.path)?;
        for (i, (k, v)) in self.query.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{}={}", utf8_percent_encode(k, QUERY), utf8_percent_encode(v, QUERY))?;
        }
        Ok(())
    }
}

// The syntax check (`check`): a malformed `--connect` or `"uri"` is bad input
// (exit 2) named as such, not a daemon that "cannot be reached" (exit 4). It
// checks the shape only: whether that daemon answers is the connection's
// business.

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
    let bad =
        |why: String| format!("{uri:?} is not a libvirt URI: {why} (e.g. qemu:///system, qemu+ssh://root@host/system)");
    check_shape(uri).map_err(bad)
}

/// [`check`]'s phases in reading order, each saying why not.
fn check_shape(uri: &str) -> Result<(), String> {
    check_characters(uri)?;
    let Some((scheme, rest)) = uri.split_once(':') else {
        return check_alias(uri);
    };
    let driver = check_scheme(scheme)?;
    let Some(rest) = rest.strip_prefix("//") else {
        return Err("the scheme must be followed by // (three slashes for a local daemon)".into());
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    if before_query.contains('#') || query.is_some_and(|q| q.contains('#')) {
        return Err("it has a fragment (#)".into());
    }
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    check_port(authority)?;
    check_escapes(path)?;
    check_escapes(query.unwrap_or(""))?;
    if driver == "qemu" && !matches!(path, "/system" | "/session" | "/embed") {
        return Err(format!("a qemu URI's path is /system or /session, not {path:?}"));
    }
    Ok(())
}

fn check_characters(uri: &str) -> Result<(), String> {
    if uri.is_empty() {
        return Err("it is empty".into());
    }
    match uri.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(format!("it contains {c:?}")),
        None => Ok(()),
    }
}

/// An alias defined in libvirt.conf (uri_aliases): letters, digits, `_-.`.
fn check_alias(uri: &str) -> Result<(), String> {
    match uri.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        true => Ok(()),
        false => Err("no scheme, and not an alias name".into()),
    }
}

/// `driver[+transport]` naming a libvirt driver and transport; the driver.
fn check_scheme(scheme: &str) -> Result<&str, String> {
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    if !DRIVERS.contains(&driver) {
        return Err(format!("{driver:?} is not a libvirt driver"));
    }
    match transport {
        Some(t) if !TRANSPORTS.contains(&t) => Err(format!("transport {t:?} is not one of {}", TRANSPORTS.join(", "))),
        _ => Ok(driver),
    }
}

/// The authority's port, if any, is a number from 1 to 65535; brackets only
/// around an IPv6 address.
fn check_port(authority: &str) -> Result<(), String> {
    let host_port = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let port = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((_, after)) = v6.split_once(']') else {
            return Err("an IPv6 address without its closing ]".into());
        };
        after.strip_prefix(':')
    } else {
        if host_port.contains(['[', ']']) {
            return Err("brackets outside an IPv6 address".into());
        }
        host_port.split_once(':').map(|(_, p)| p)
    };
    let Some(p) = port else { return Ok(()) };
    match p.parse::<u16>() {
        Err(_) => Err(format!("port {p:?} is not a number up to 65535")),
        Ok(0) => Err(format!("port {p:?} is 0, which no daemon listens on: give a port from 1 to 65535")),
        Ok(_) => Ok(()),
    }
}

/// Every `%` is followed by two hex digits.
fn check_escapes(part: &str) -> Result<(), String> {
    let b = part.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !b.get(i + 1..i + 3).is_some_and(|h| h.len() == 2 && h.iter().all(u8::is_ascii_hexdigit)) {
                return Err("a % not followed by two hex digits".into());
            }
            i += 2;
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Uri {
        Uri::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_usual_uris() {
        let u = p("qemu:///system");
        assert_eq!((u.driver.as_str(), u.transport.as_deref(), u.host.as_deref()), ("qemu", None, None));
        assert_eq!((u.path.as_str(), u.mode(), u.is_local()), ("/system", Mode::System, true));
        let u = p("qemu:///session");
        assert_eq!((u.mode(), u.is_local()), (Mode::Session, true));
        let u = p("test:///default");
        assert_eq!((u.driver.as_str(), u.mode(), u.is_local()), ("test", Mode::Other, true));
        assert_eq!(p("qemu:///embed?root=/tmp/x").mode(), Mode::Other);
    }

    #[test]
    fn a_session_over_an_explicit_socket_is_a_session() {
        let u = p("qemu+unix:///session?socket=/run/project-vm-fleet/libvirt/libvirt-sock");
        assert_eq!((u.transport.as_deref(), u.mode(), u.is_local()), (Some("unix"), Mode::Session, true));
        assert_eq!(u.socket(), Some("/run/project-vm-fleet/libvirt/libvirt-sock"));
        // Ends in neither /system nor /session, yet is one.
        let u = p("qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock");
        assert_eq!((u.mode(), u.is_local()), (Mode::System, true));
        assert_eq!(p("qemu:///session/").mode(), Mode::Session);
    }

    #[test]
    fn remote_uris_keep_user_host_port_and_parameters() {
        let u = p("qemu+ssh://alice@gpu-box:2222/system?keyfile=/k%20ey&known_hosts=/kh&no_verify=1");
        assert_eq!(u.transport.as_deref(), Some("ssh"));
        assert_eq!((u.user.as_deref(), u.host.as_deref(), u.port), (Some("alice"), Some("gpu-box"), Some(2222)));
        assert_eq!(
            (u.param("keyfile"), u.param("known_hosts"), u.param("no_verify")),
            (Some("/k ey"), Some("/kh"), Some("1"))
        );
        assert!(!u.is_local() && u.is_ssh());
        let u = p("qemu+tls://[fe80::1]:16514/session");
        assert_eq!((u.host.as_deref(), u.port, u.mode()), (Some("fe80::1"), Some(16514), Mode::Session));
        assert!(!u.is_local());
        assert_eq!(p("qemu+ssh://[::1]/system").host.as_deref(), Some("::1"));
        assert!(!p("qemu+ext:///system?command=/bin/x").is_local());
        assert!(p("qemu://localhost/system").is_local());
        assert!(!p("qemu+tcp://localhost/system").is_local());
    }

    #[test]
    fn bad_uris_say_why() {
        for bad in [
            "qemu",
            "://x",
            "qemu+://x/system",
            "qemu://h:port/system",
            "qemu+ssh://[::1/system",
            "qemu+ssh://h:0/system",
            "qemu+tcp://[::1]:00/system",
        ] {
            let e = Uri::parse(bad).unwrap_err();
            assert!(e.to_string().contains("not a libvirt URI"), "{bad}: {e}");
        }
    }

    #[test]
    fn local_and_test_from_the_parsed_uri() {
        assert!(is_local("qemu:///system") && is_local("myalias") && is_local("qemu+unix:///session?socket=/s"));
        assert!(!is_local("qemu+ssh://h/system") && !is_local("not a uri") && !is_local(""));
        assert!(is_test("test:///default") && is_test("test:///tmp/node.xml"));
        assert!(!is_test("qemu:///system") && !is_test("testing") && !is_test("test+ssh"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "qemu:///system",
            "qemu+unix:///session?socket=/run/x/libvirt-sock",
            "qemu+ssh://alice@gpu-box:2222/system?keyfile=/k%20ey",
            "qemu+tls://[fe80::1]:16514/session",
        ] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
    }
}

#[cfg(test)]
mod check_tests {
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
            ("qemu+ssh://h:0/system", "port \"0\" is 0"),
            ("qemu+tcp://[::1]:000/system", "is 0"),
        ] {
            let e = check(badu).expect_err(badu);
            assert!(e.contains(says), "{badu}: {e}");
        }
    }
}
