//! The agent and its workers on separate hosts: network namespaces the test makes with `ip netns`,
//! joined to the agent's namespace by one veth pair per worker (10.77.W.1 on the agent's side,
//! 10.77.W.2 on worker W's). Each node is a thread that enters its namespace with `setns`, so the
//! sockets it creates live there. Runs as root; otherwise it is skipped with a message.

use std::fs::File;
use std::process::Command;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use paramserv_switch::client::{AllReduce, ClientConfig};
use paramserv_switch::daemon::{DaemonConfig, SpawnedDaemon};
use paramserv_switch::datapath::Faults;
use paramserv_switch::proto::agent::JobParams;
use paramserv_switch::proto::fixed::reference_sum;

/// Namespaces (and with them their veth ends) removed when dropped, even if the test fails.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("namespace file");
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Why this machine cannot run the test, if it cannot.
fn unavailable() -> Option<String> {
    if std::env::var_os("PS_SKIP_NETNS").is_some() {
        return Some("PS_SKIP_NETNS is set".into());
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is missing".into()),
    }
}

fn build(workers: usize) -> Result<Namespaces, String> {
    let tag = std::process::id() % 100_000;
    let agent = format!("psw{tag}a");
    let mut made = Namespaces(vec![]);
    ip(&["netns", "add", &agent])?;
    made.0.push(agent.clone());
    ip(&["-n", &agent, "link", "set", "lo", "up"])?;
    for w in 0..workers {
        let ns = format!("psw{tag}w{w}");
        ip(&["netns", "add", &ns])?;
        made.0.push(ns.clone());
        let (a_end, w_end) = (format!("pa{tag}w{w}"), format!("pw{tag}w{w}"));
        ip(&["link", "add", &a_end, "netns", &agent, "type", "veth", "peer", "name", &w_end, "netns", &ns])?;
        ip(&["-n", &agent, "addr", "add", &format!("10.77.{w}.1/24"), "dev", &a_end])?;
        ip(&["-n", &ns, "addr", "add", &format!("10.77.{w}.2/24"), "dev", &w_end])?;
        ip(&["-n", &agent, "link", "set", &a_end, "up"])?;
        ip(&["-n", &ns, "link", "set", &w_end, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(made)
}

#[test]
fn agent_and_workers_in_separate_network_namespaces() {
    if let Some(why) = unavailable() {
        eprintln!("skipping agent_and_workers_in_separate_network_namespaces: {why}");
        return;
    }
    let workers = 3;
    let namespaces = build(workers).expect("make the namespaces and veth links");
    let agent_ns = namespaces.0[0].clone();
    // Bind the agent inside its namespace; its loop thread keeps the socket's namespace.
    let daemon = std::thread::spawn(move || {
        enter(&agent_ns);
        let mut config = DaemonConfig::new("0.0.0.0:0".parse().unwrap());
        config.faults = Faults { drop: 0.03, ..Faults::default() };
        SpawnedDaemon::spawn(config).expect("bind the agent")
    })
    .join()
    .unwrap();
    let port = daemon.addr().port();
    let params = JobParams { workers: workers as u16, slots: 16, values: 256 };
    let inputs: Vec<Vec<f32>> =
        (0..workers).map(|w| (0..10_000).map(|i| ((i * 7 + w * 13) % 101) as f32 * 0.37 - 18.0).collect()).collect();
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (ns, input) = (namespaces.0[w + 1].clone(), &inputs[w]);
                s.spawn(move || {
                    enter(&ns);
                    // Each worker reaches the agent over its own link.
                    let agent = format!("10.77.{w}.1:{port}").parse().unwrap();
                    let mut config = ClientConfig::new(agent, 42, w as u16, params);
                    config.faults = Faults { drop: 0.03, ..Faults::default() };
                    config.timeout = Duration::from_secs(60);
                    let mut client = AllReduce::connect(config).expect("join across the veth link");
                    let local = client.local_addr().unwrap();
                    assert_eq!(local.ip().to_string(), "0.0.0.0");
                    let mut out = input.clone();
                    client.all_reduce(&mut out).expect("all-reduce across namespaces");
                    client.leave().expect("leave");
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let expected = reference_sum(&refs, 256).unwrap();
    for out in &results {
        assert_eq!(out, &expected);
    }
    let stats = daemon.stop().unwrap();
    assert_eq!(stats.jobs.get(&42).map(|j| j.rounds > 0), Some(true), "{stats:?}");
}
