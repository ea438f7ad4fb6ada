//! A loopback HTTP server for image pulls: fixed routes, a log of the paths
//! requested, and replies that misbehave on purpose (hang up half-way, or
//! stall half-way until the test lets go). Bounded: it stops when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub enum Reply {
    Full(Vec<u8>),
    /// Announces the whole length, sends this many bytes, hangs up.
    CutAt(Vec<u8>, usize),
    /// Sends this many bytes, then waits for [`Server::release`] (or 60 s).
    StallAt(Vec<u8>, usize),
}

struct Shared {
    routes: Mutex<HashMap<String, Reply>>,
    hits: Mutex<Vec<String>>,
    stalled: AtomicUsize,
    release: AtomicBool,
    stop: AtomicBool,
}

pub struct Server {
    pub port: u16,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            routes: Mutex::new(HashMap::new()),
            hits: Mutex::new(Vec::new()),
            stalled: AtomicUsize::new(0),
            release: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(conn, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server { port, shared, thread: Some(thread) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn route(&self, path: &str, reply: Reply) {
        self.shared.routes.lock().unwrap().insert(path.to_owned(), reply);
    }

    /// How many times `path` was requested.
    pub fn hits(&self, path: &str) -> usize {
        self.shared.hits.lock().unwrap().iter().filter(|p| *p == path).count()
    }

    /// Waits until a stalling reply has sent its first part.
    pub fn wait_stalled(&self) {
        let t0 = Instant::now();
        while self.shared.stalled.load(Ordering::SeqCst) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(60), "no client reached the stall");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn release(&self) {
        self.shared.release.store(true, Ordering::SeqCst);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.release.store(true, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, s: &Shared) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_owned();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    s.hits.lock().unwrap().push(path.clone());
    let reply = s.routes.lock().unwrap().get(&path).cloned();
    let Some(reply) = reply else {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let (body, upto) = match &reply {
        Reply::Full(b) => (b, b.len()),
        Reply::CutAt(b, n) | Reply::StallAt(b, n) => (b, *n),
    };
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    if conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(&body[..upto])).is_err() {
        return;
    }
    let _ = conn.flush();
    if let Reply::StallAt(..) = reply {
        s.stalled.fetch_add(1, Ordering::SeqCst);
        let t0 = Instant::now();
        while !s.release.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = conn.write_all(&body[upto..]);
    }
    // CutAt: dropping the connection here is the hang-up.
}
