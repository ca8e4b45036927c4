//! The CLI as separate processes on loopback: a coordinator, servers and workers that find each
//! other through flags, `PS_*` variables and a TOML file, train, and shut down cleanly; and the
//! failures a launcher must see as a non-zero exit with a reason, within seconds.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{KillOnDrop, first_line, paramserv, unused_port, wait_output};

const LIMIT: Duration = Duration::from_secs(90);
/// A job small enough for a debug build.
const JOB: &[&str] = &["--features", "3000", "--samples", "6000", "--nnz", "10", "--epochs", "3", "--batch-size", "32"];

fn spawn_coordinator(servers: u32, workers: u32, extra: &[&str]) -> (KillOnDrop, String) {
    let mut c = paramserv()
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--servers",
            &servers.to_string(),
            "--workers",
            &workers.to_string(),
        ])
        .args(JOB)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut c, LIMIT);
    let addr = line
        .trim()
        .strip_prefix("coordinator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    (KillOnDrop(Some(c)), addr.to_owned())
}

/// Waits for `child` and returns its stderr, failing the test if it exited 0.
fn fails(child: std::process::Child, what: &str) -> String {
    let out = wait_output(child, LIMIT, what);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} should have failed; stderr: {err}");
    err
}

/// Runs `paramserv args` to its end and returns its stderr, failing the test if it exited 0.
fn run_fails(args: &[&str]) -> String {
    fails(paramserv().args(args).stderr(Stdio::piped()).spawn().unwrap(), args[0])
}

#[test]
fn a_multi_process_cluster_trains_and_shuts_down_cleanly() {
    let (mut coord, addr) = spawn_coordinator(2, 2, &["--job-id", "it", "--secret", "k3y"]);
    // One server from flags, one from the environment, workers from a config file.
    let s0 = paramserv()
        .args(["server", "--coordinator", &addr, "--job-id", "it", "--secret", "k3y"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let s1 = paramserv()
        .arg("server")
        .env("PS_COORDINATOR", &addr)
        .env("PS_JOB_ID", "it")
        .env("PS_SECRET", "k3y")
        .env("PS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("paramserv-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("cluster.toml");
    std::fs::write(
        &toml,
        format!("coordinator = '{addr}'\njob-id = 'it'\nsecret = 'k3y'\n[commands.worker]\njson = true\n"),
    )
    .unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut w = paramserv();
            w.args(["worker", "--config", toml.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped());
            w.spawn().unwrap()
        })
        .collect();
    let mut servers = [KillOnDrop(Some(s0)), KillOnDrop(Some(s1))];
    let reports: Vec<serde_json::Value> = workers
        .into_iter()
        .map(|w| {
            let out = wait_output(w, LIMIT, "worker");
            assert!(out.status.success(), "worker failed: {}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!("worker stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout))
            })
        })
        .collect();
    let out = wait_output(coord.0.take().unwrap(), LIMIT, "coordinator");
    assert!(out.status.success(), "coordinator failed: {}", String::from_utf8_lossy(&out.stderr));
    for s in &mut servers {
        let out = wait_output(s.0.take().unwrap(), LIMIT, "server");
        assert!(out.status.success(), "a server did not shut down cleanly");
    }
    std::fs::remove_dir_all(&dir).ok();

    for r in &reports {
        let (initial, last) = (r["initial_loss"].as_f64().unwrap(), r["final_loss"].as_f64().unwrap());
        assert!(last < initial, "{initial} -> {last}");
        assert_eq!(r["epochs"], 3);
        assert!(r["bytes_sent"].as_u64().unwrap() > 0 && r["bytes_received"].as_u64().unwrap() > 0);
        assert_eq!(r["links"].as_array().unwrap().len(), 4);
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(reports[0]["final_loss"], reports[1]["final_loss"]);
    assert_eq!(reports[0]["bytes_sent"], reports[1]["bytes_sent"]);

    // `local --json` prints an object with the same fields.
    let local = paramserv()
        .args(["local", "--servers", "2", "--workers", "2", "--json"])
        .args(JOB)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(local, LIMIT, "local");
    assert!(out.status.success());
    let local: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&local), keys(&reports[0]));
}

#[test]
fn a_missing_worker_makes_every_process_exit_with_the_reason() {
    let (mut coord, addr) = spawn_coordinator(1, 2, &["--join-timeout", "2s"]);
    let server = paramserv()
        .args(["server", "--coordinator", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker = paramserv().args(["worker", "--coordinator", &addr]).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let err = fails(coord.0.take().unwrap(), "coordinator");
    assert!(err.contains("missing 1 worker(s)"), "{err}");
    for (p, what) in [(server, "server"), (worker, "worker")] {
        let err = fails(p, what);
        assert!(err.contains("missing 1 worker(s)"), "{what}: {err}");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn an_address_nobody_listens_on_fails_within_seconds() {
    let port = unused_port();
    let started = Instant::now();
    let err = run_fails(&["worker", "--coordinator", &format!("127.0.0.1:{port}"), "--join-timeout", "1s"]);
    assert!(err.contains(&format!("cannot reach the coordinator at 127.0.0.1:{port}")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn a_node_of_another_job_is_refused_and_told_why() {
    let (_coord, addr) = spawn_coordinator(1, 1, &["--job-id", "alpha"]);
    let err = run_fails(&["worker", "--coordinator", &addr, "--job-id", "beta"]);
    assert!(err.contains("refused this node") && err.contains("job 'beta'"), "{err}");
}

#[test]
fn a_server_killed_mid_job_fails_the_job_instead_of_hanging() {
    let (mut coord, mut server, worker) = running_job();
    server.0.as_mut().unwrap().kill().unwrap();
    let err = fails(worker, "worker");
    assert!(err.contains("server 0"), "{err}");
    let err = fails(coord.0.take().unwrap(), "coordinator");
    assert!(err.contains("server 0"), "{err}");
}

/// A running 1-server, 1-worker job with a long schedule; returns once the worker is training.
fn running_job() -> (KillOnDrop, KillOnDrop, std::process::Child) {
    running_job_with(&[])
}

fn running_job_with(coordinator_flags: &[&str]) -> (KillOnDrop, KillOnDrop, std::process::Child) {
    let (coord, addr) = spawn_coordinator(1, 1, &[&["--epochs", "1000"], coordinator_flags].concat());
    let mut server = paramserv();
    server.args(["server", "--coordinator", &addr]).stdout(Stdio::null()).stderr(Stdio::piped());
    let server = KillOnDrop(Some(server.spawn().unwrap()));
    let mut worker = paramserv()
        .args(["worker", "--coordinator", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut worker, LIMIT);
    assert!(line.starts_with("epoch"), "{line}");
    (coord, server, worker)
}

#[test]
fn a_worker_killed_mid_job_fails_the_job_naming_it() {
    let (mut coord, mut server, mut worker) = running_job();
    worker.kill().unwrap();
    let _ = worker.wait();
    let err = fails(coord.0.take().unwrap(), "coordinator");
    assert!(err.contains("worker 0") && err.contains("disconnected"), "{err}");
    let err = fails(server.0.take().unwrap(), "server");
    assert!(err.contains("worker 0"), "{err}");
}

#[test]
fn a_coordinator_killed_mid_job_stops_every_node() {
    let (mut coord, mut server, worker) = running_job();
    coord.0.as_mut().unwrap().kill().unwrap();
    let err = fails(worker, "worker");
    assert!(err.contains("the coordinator at") && err.contains("closed the connection"), "{err}");
    let err = fails(server.0.take().unwrap(), "server");
    assert!(err.contains("closed the connection"), "{err}");
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

#[test]
fn a_stopped_server_fails_the_job_within_the_heartbeat_timeout() {
    let (mut coord, server, worker) = running_job_with(&["--heartbeat-timeout", "1s"]);
    // Stopped, not killed: its connections stay open and nothing says it is gone.
    signal(server.0.as_ref().unwrap(), "-STOP");
    let started = Instant::now();
    let err = fails(worker, "worker");
    assert!(err.contains("server 0") && err.contains("stopped responding"), "{err}");
    let err = fails(coord.0.take().unwrap(), "coordinator");
    assert!(err.contains("server 0") && err.contains("nothing heard for 1s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    signal(server.0.as_ref().unwrap(), "-CONT");
}

#[test]
fn nodes_give_up_on_a_stopped_coordinator() {
    let (coord, mut server, worker) = running_job_with(&["--heartbeat-timeout", "1s"]);
    signal(coord.0.as_ref().unwrap(), "-STOP");
    let started = Instant::now();
    let err = fails(worker, "worker");
    assert!(err.contains("the coordinator at") && err.contains("stopped responding"), "{err}");
    let err = fails(server.0.take().unwrap(), "server");
    assert!(err.contains("stopped responding"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    signal(coord.0.as_ref().unwrap(), "-CONT");
}

#[test]
fn bad_flags_and_config_files_are_refused_before_anything_starts() {
    // Every job option that has a range says which option and which range.
    for (args, says) in [
        (
            &["local", "--lr=-1"][..],
            "invalid optimizer: sgd: lr = -1 is out of range (must be a positive finite number)",
        ),
        (&["local", "--optimizer", "adamw"], "unknown optimizer 'adamw' (expected sgd, momentum, nesterov"),
        (&["local", "--optimizer", "adam:beta1=1.5"], "adam: beta1 = 1.5 is out of range (must be in [0, 1))"),
        (&["local", "--optimizer", "rmsprop:lr=0.1,gamma=2"], "rmsprop has no hyper-parameter 'gamma'"),
        (&["local", "--consistency", "eventual"], "unknown consistency 'eventual'"),
        (&["local", "--consistency", "ssp:-1"], "ssp:-1"),
        (&["local", "--workers", "2", "--consistency", "backup:2"], "backup:2"),
        (&["local", "--consistency", "hogwild", "--optimizer", "shampoo"], "shampoo under hogwild"),
        (&["local", "--partition", "striped"], "unknown data partitioning 'striped'"),
        // A codec typo names the problem and lists every codec with its parameters.
        (&["local", "--codec", "topq:0.1"], "unknown codec \"topq\""),
        (&["local", "--codec", "topk:2"], "sketchml:buckets=64,groups=buckets,rows=2,cols=0.3"),
        (&["local", "--pull-codec", "ef(fp16)"], "error feedback keeps one residual per receiver"),
        (&["local", "--table-codec", "bias=fp16"], "no table named 'bias' (the job's tables: weights)"),
        (
            &["local", "--aggregation", "switch"],
            "switch sums every worker's gradient of a step at once, so it needs --consistency bsp",
        ),
        (
            &["local", "--aggregation", "switch", "--consistency", "bsp", "--switch", "nowhere"],
            "\"nowhere\" is not an IP:PORT address",
        ),
        (
            &["coordinator", "--listen", "127.0.0.1:0", "--aggregation", "switch", "--consistency", "bsp"],
            "--aggregation switch needs --switch ADDR for a multi-process job",
        ),
        (&["bench", "allreduce", "--loss", "1.5"], "--loss 1.5 must be in [0, 1)"),
        (&["bench", "allreduce", "--workers", "0"], "--workers, --rounds and --floats must be at least 1"),
        (&["bench", "allreduce", "--datapath", "dpdk"], "mmsg"),
    ] {
        let err = run_fails(args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(run_fails(&["worker"]).contains("PS_COORDINATOR"));
    let file = std::env::temp_dir().join(format!("paramserv-badcfg-{}.toml", std::process::id()));
    std::fs::write(&file, "servres = 3\n").unwrap();
    let out = wait_output(
        paramserv().args(["local", "--config", file.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap(),
        LIMIT,
        "local",
    );
    std::fs::remove_file(&file).ok();
    assert_eq!(out.status.code(), Some(2), "a config error exits with 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting 'servres'"));
}

#[test]
fn bench_allreduce_verifies_both_backends_with_loss() {
    for args in [
        &["--backend", "switch", "--workers", "3", "--loss", "0.05", "--elems-per-packet", "64"][..],
        &["--backend", "switch", "--workers", "2", "--elems-per-packet", "2048", "--slots", "8"][..],
        &["--backend", "ps", "--workers", "2", "--transport", "inproc"][..],
    ] {
        let out = wait_output(
            paramserv()
                .args([
                    "bench",
                    "allreduce",
                    "--floats",
                    "20000",
                    "--rounds",
                    "2",
                    "--udp-baseline-seconds",
                    "0.05",
                    "--json",
                ])
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
            LIMIT,
            "bench allreduce",
        );
        assert!(out.status.success(), "{args:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["verified"], true, "{args:?}: {report}");
        assert!(report["max_abs_error"].as_f64().unwrap() <= report["error_bound"].as_f64().unwrap(), "{report}");
        assert!(report["goodput_gbit_s"].as_f64().unwrap() > 0.0);
        if args[1] == "switch" {
            assert!(report["agent_pps"].as_f64().unwrap() > 0.0, "{report}");
            assert!(report["udp_baseline_pps"].as_f64().unwrap() > 0.0, "{report}");
        }
        if args.contains(&"0.05") {
            assert!(report["retransmits"].as_u64().unwrap() > 0, "5% loss needed retransmissions: {report}");
        }
    }
}
