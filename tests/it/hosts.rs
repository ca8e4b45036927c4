//! Several hosts on one machine: network namespaces joined by veth links to a bridge, made and
//! removed by the test. Runs the README's three-host example across them, so what crosses a
//! network (addresses a server must advertise, a coordinator on another host) is tested for real.
//!
//! Needs root and iproute2 (`ip netns`), as CI has. Elsewhere it fails and says so; set
//! `PS_SKIP_NETNS=1` to skip it knowingly.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{KillOnDrop, first_line, wait_output};

const LIMIT: Duration = Duration::from_secs(90);

/// `n` hosts `10.77.0.1..=n` on one bridge; everything is deleted on drop.
struct Hosts {
    switch: String,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2's `ip` is installed");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Hosts {
    fn create(n: usize) -> Self {
        let tag = std::process::id();
        let switch = format!("ps{tag}sw");
        let hosts: Vec<String> = (0..n).map(|i| format!("ps{tag}h{i}")).collect();
        // Built up as namespaces are made, so a failure half-way still cleans up on drop.
        let mut made = Self { switch: switch.clone(), hosts: Vec::new() };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, h) in hosts.iter().enumerate() {
            ip(&["netns", "add", h]);
            made.hosts.push(h.clone());
            let (outer, inner) = (format!("ps{tag}v{i}"), format!("ps{tag}e{i}"));
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &outer, "netns", &switch]);
            ip(&["link", "set", &inner, "netns", h]);
            ip(&["-n", &switch, "link", "set", &outer, "master", "br0", "up"]);
            ip(&["-n", h, "addr", "add", &format!("10.77.0.{}/24", i + 1), "dev", &inner]);
            ip(&["-n", h, "link", "set", &inner, "up"]);
            ip(&["-n", h, "link", "set", "lo", "up"]);
        }
        made
    }

    /// `paramserv` run on host `i`.
    fn paramserv(&self, i: usize) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i], env!("CARGO_BIN_EXE_paramserv")]).stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PS_") {
                c.env_remove(k);
            }
        }
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in self.hosts.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", h]).status();
        }
    }
}

#[test]
fn the_three_host_example_runs_across_network_namespaces() {
    if std::env::var_os("PS_SKIP_NETNS").is_some() {
        eprintln!("skipped: PS_SKIP_NETNS is set");
        return;
    }
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    assert!(root, "this test makes network namespaces and needs root (set PS_SKIP_NETNS=1 to skip it knowingly)");
    let hosts = Hosts::create(3);
    let job = ["--features", "3000", "--samples", "6000", "--epochs", "3"];

    // Host 1 (10.77.0.1): the coordinator defines the job.
    let mut coord = hosts
        .paramserv(0)
        .args(["coordinator", "--listen", "10.77.0.1:7000", "--servers", "1", "--workers", "1", "--secret", "netns"])
        .args(job)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(first_line(&mut coord, LIMIT).trim(), "coordinator listening on 10.77.0.1:7000");
    let mut coord = KillOnDrop(Some(coord));
    // Host 2: a server that binds every interface and must advertise 10.77.0.2, the address the
    // other hosts reach it at; configured through the environment, as a launcher would.
    let server = hosts
        .paramserv(1)
        .arg("server")
        .env("PS_COORDINATOR", "10.77.0.1:7000")
        .env("PS_SECRET", "netns")
        .env("PS_LISTEN", "0.0.0.0:7001")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(Some(server));
    // Host 3: a worker.
    let worker = hosts
        .paramserv(2)
        .args(["worker", "--coordinator", "10.77.0.1:7000", "--secret", "netns", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(worker, LIMIT, "worker");
    assert!(out.status.success(), "worker failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["final_loss"].as_f64().unwrap() < report["initial_loss"].as_f64().unwrap());
    assert!(report["bytes_sent"].as_u64().unwrap() > 0);
    for p in [&mut coord, &mut server] {
        let out = wait_output(p.0.take().unwrap(), LIMIT, "coordinator or server");
        assert!(out.status.success());
    }
}
