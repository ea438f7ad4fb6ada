//! `image pull` and first-use pulls against a real libvirtd, from a loopback
//! HTTP server: verified, cached, and never usable when the download went
//! wrong (bad checksum, a server that hangs up, SIGKILL mid-way). No guest
//! boots here.

mod common;

use std::process::Stdio;

use common::http::{Reply, Server};
use common::*;
use serde_json::json;

/// The tiny image's bytes and its SHA512SUMS line (computed by coreutils, not by us).
fn image_and_sums(env: &Env) -> (Vec<u8>, String, String) {
    let img = tiny_image(&env.dir);
    let bytes = std::fs::read(&img).unwrap();
    let hex = sh(&format!("sha512sum {} | cut -d' ' -f1", img.display())).trim().to_owned();
    (bytes, format!("{}  other.qcow2\n{hex}  tiny.qcow2\n", "0".repeat(128)), hex)
}

/// A loopback server with the tiny image at PREFIX/tiny.qcow2 (stalling
/// half-way until released) and its PREFIX/SHA512SUMS, and an env whose
/// settings name it image `image`; with the image's sha512.
fn stalling_source(tag: &str, port: u16, image: &str, prefix: &str, vms: &[&str]) -> (Server, Env, Cleanup, String) {
    let srv = Server::start();
    let (url, sums_url) = (srv.url(&format!("{prefix}/tiny.qcow2")), srv.url(&format!("{prefix}/SHA512SUMS")));
    let (env, guard) = host_env(tag, port, json!({"images": {image: {"url": url, "checksums": sums_url}}}), vms);
    let (bytes, sums, hex) = image_and_sums(&env);
    srv.route(&format!("{prefix}/tiny.qcow2"), Reply::StallAt(bytes.clone(), bytes.len() / 2));
    srv.route(&format!("{prefix}/SHA512SUMS"), Reply::Full(sums.into_bytes()));
    (srv, env, guard, hex)
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn pull_verifies_caches_and_keeps_nothing_from_a_bad_download() {
    let (env, _c) = host_env("pull", 22400, json!({}), &[]);
    let (bytes, sums, hex) = image_and_sums(&env);
    let srv = Server::start();
    srv.route("/d/tiny.qcow2", Reply::Full(bytes.clone()));
    srv.route("/d/SHA512SUMS", Reply::Full(sums.into_bytes()));
    let (url, sums_url) = (srv.url("/d/tiny.qcow2"), srv.url("/d/SHA512SUMS"));

    // A good pull, checked against the published SHA512SUMS.
    let r = env.run(&["image", "pull", &url, "--name", "tiny", "--checksums", &sums_url, "--json"]).ok().json();
    assert_eq!((r["verified"].as_bool(), r["cached"].as_bool()), (Some(true), Some(false)), "{r}");
    assert_eq!(r["checksum"], format!("sha512:{hex}"));
    assert_eq!(r["volume"], format!("tiny@{}.img", &hex[..12]));
    assert_eq!(srv.hits("/d/tiny.qcow2"), 1);
    let list = env.run(&["image", "list", "--json"]).ok().json();
    let tiny = list.as_array().unwrap().iter().find(|e| e["name"] == "tiny").expect("listed");
    assert_eq!((tiny["status"].as_str(), tiny["source"].as_str()), (Some("current"), Some(url.as_str())), "{list}");
    assert_eq!(tiny["checksum"], format!("sha512:{hex}"));
    assert_eq!(tiny["format"], "qcow2");

    // Again: nothing is downloaded.
    let r = env.run(&["image", "pull", &url, "--name", "tiny", "--checksums", &sums_url, "--json"]).ok().json();
    assert_eq!(r["cached"], true, "{r}");
    assert_eq!(srv.hits("/d/tiny.qcow2"), 1, "a cached image was downloaded again");
    // --refresh asks the checksum file again; same release, still no download.
    let r = env.run(&["image", "pull", &url, "--name", "tiny", "--checksums", &sums_url, "--refresh", "--json"]);
    assert_eq!(r.ok().json()["cached"], true);
    assert_eq!(srv.hits("/d/tiny.qcow2"), 1);

    // A wrong checksum: refused, nothing kept.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let r = env.run(&["image", "pull", &url, "--name", "wrong", "--checksum", &wrong]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    assert_eq!(image_volumes(&env, "wrong"), Vec::<String>::new());
    let r = env.run(&["create", "w", "1G", "1", "5G", "--image", "wrong"]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    // A server that hangs up half-way: nothing kept.
    srv.route("/cut/tiny.qcow2", Reply::CutAt(bytes.clone(), bytes.len() / 2));
    let r = env.run(&["image", "pull", &srv.url("/cut/tiny.qcow2"), "--name", "cut"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert_eq!(image_volumes(&env, "cut"), Vec::<String>::new(), "{}", r.stderr);

    // Not a disk image (an error page served as 200): refused before upload.
    srv.route("/html/page.qcow2", Reply::Full(b"<html><body>moved</body></html>".to_vec()));
    let r = env.run(&["image", "pull", &srv.url("/html/page.qcow2"), "--name", "page"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot be a base image"), "{}", r.stderr);
    assert_eq!(image_volumes(&env, "page"), Vec::<String>::new());
    // An unknown catalog name says what is known.
    let r = env.run(&["image", "pull", "debian-31"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("debian-13"), "{}", r.stderr);
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn a_killed_pull_leaves_nothing_create_would_use_and_the_next_create_pulls_again() {
    let (srv, env, _c, hex) = stalling_source("pullkill", 22420, "slow", "/s", &["after"]);

    let mut child = env.cmd(&["image", "pull", "slow"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    srv.wait_stalled();
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    srv.release();
    // Whatever the kill left has no record: listed as unverified, never used.
    let left: Vec<String> = image_volumes(&env, "slow");
    assert!(left.iter().all(|v| v.ends_with(".img")), "a record survived the kill: {left:?}");
    let list = env.run(&["image", "list", "--json"]).ok().json();
    assert!(list.as_array().unwrap().iter().all(|e| e["status"] == "unverified"), "{list}");
    // The next create pulls it again (replacing the partial upload) and builds on it.
    let r = env.run(&["create", "after", "1G", "1", "5G", "--project-disk", "1G", "--image", "slow", "--json"]).ok();
    assert_eq!(r.json()["create"]["base_image"], "slow");
    assert_eq!(
        image_volumes(&env, "slow"),
        vec![format!("slow@{}.img", &hex[..12]), format!("slow@{}.json", &hex[..12])]
    );
    assert_eq!(srv.hits("/s/tiny.qcow2"), 2);
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn concurrent_first_creates_on_a_fresh_pool_pull_the_default_once() {
    // No base_image: the default (debian-13), served from loopback through an `images` override.
    let names = ["fa", "fb", "fc"];
    let (srv, env, _c, _) = stalling_source("firstuse", 22440, "debian-13", "/d13", &names);

    let children: Vec<_> = names
        .iter()
        .map(|n| {
            env.cmd(&["create", n, "1G", "1", "5G", "--project-disk", "1G", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // One of them downloads; the others wait for it on the image lock.
    srv.wait_stalled();
    std::thread::sleep(std::time::Duration::from_millis(500));
    srv.release();
    let mut ports = Vec::new();
    for (n, c) in names.iter().zip(children) {
        let out = c.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "create {n}: {stderr}");
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["create"]["base_image"], "debian-13");
        ports.push(r["create"]["ssh_port"].as_u64().unwrap());
    }
    assert_eq!(srv.hits("/d13/tiny.qcow2"), 1, "the image was downloaded more than once");
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "two VMs got the same forwarded ssh port: {ports:?}");
    let list = env.run(&["image", "list", "--json"]).ok().json();
    let d13 = list.as_array().unwrap().iter().find(|e| e["name"] == "debian-13").expect("listed");
    let mut users: Vec<String> = serde_json::from_value(d13["used_by"].clone()).unwrap();
    users.sort();
    assert_eq!(users, names);
}
