//! The `switch-agent` binary: starts, reports its address, serves a job, prints `--stats`, stops
//! cleanly on SIGTERM, and refuses bad flags with a message.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use paramserv_switch::client::{AllReduce, ClientConfig};
use paramserv_switch::proto::agent::JobParams;

const BIN: &str = env!("CARGO_BIN_EXE_switch-agent");

fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn serves_a_job_prints_stats_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--stats", "0.05"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switch-agent");
    let (out, err) = (lines(child.stdout.take().unwrap()), lines(child.stderr.take().unwrap()));
    let first = err.recv_timeout(Duration::from_secs(10)).expect("a start line");
    let addr = first
        .strip_prefix("switch-agent listening on ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected start line: {first}"))
        .parse()
        .unwrap();
    let params = JobParams { workers: 2, slots: 8, values: 64 };
    std::thread::scope(|s| {
        for w in 0..2u16 {
            s.spawn(move || {
                let mut client = AllReduce::connect(ClientConfig::new(addr, 7, w, params)).unwrap();
                let mut data = vec![f32::from(w) + 1.0; 1000];
                client.all_reduce(&mut data).unwrap();
                assert!(data.iter().all(|&x| x == 3.0));
            });
        }
    });
    // The job's line shows up within a few intervals.
    let mut saw_job = false;
    while let Ok(line) = out.recv_timeout(Duration::from_secs(10)) {
        if line.trim_start().starts_with("job 7:") {
            assert!(line.contains("retransmits served 0"), "{line}");
            saw_job = true;
            break;
        }
    }
    assert!(saw_job, "no stats line for job 7");
    terminate(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // The child has exited: its stderr reaches EOF, and the reader thread ends the channel.
    let mut last = Vec::new();
    while let Ok(line) = err.recv_timeout(Duration::from_secs(10)) {
        last.push(line);
    }
    assert!(last.iter().any(|l| l.starts_with("switch-agent stopped:")), "{last:?}");
}

fn terminate(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    for (args, needle) in [
        (&["--faults", "drop=2"][..], "drop"),
        (&["--faults", "loss=0.1"][..], "dup"),
        (&["--datapath", "dpdk"][..], "mmsg"),
        (&["--listen", "nowhere"][..], "--listen"),
        (&["--stats=-1"][..], "--stats"),
        (&["--stats", "0"][..], "positive"),
        (&["--max-slots", "0"][..], "--max-slots"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Runs the binary with `args` and waits up to 10 s for it to exit; a binary still running then
/// (it accepted the flags and serves) is killed and the test fails.
fn exits(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let err = child.wait_with_output().unwrap().stderr;
            panic!("switch-agent {args:?} started instead of refusing: {}", String::from_utf8_lossy(&err));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn limits_whose_largest_pool_exceeds_the_cap_are_refused_at_startup() {
    // 4096 slots of 2048 values take about 129 MiB, above the 64 MiB default cap.
    for args in [&["--max-slots", "4096", "--max-values", "2048"][..], &["--max-pool-bytes", "1000000"]] {
        let out = exits(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--max-pool-bytes") && err.contains("raise --max-pool-bytes to"), "{args:?}: {err}");
    }
    // Raised to what the message asks for, the same limits start.
    let out = exits(&["--max-slots", "4096", "--max-values", "2048"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let needed = err.rsplit("raise --max-pool-bytes to ").next().unwrap().split_whitespace().next().unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--max-slots", "4096", "--max-values", "2048", "--max-pool-bytes", needed])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = lines(child.stderr.take().unwrap()).recv_timeout(Duration::from_secs(10)).expect("a start line");
    terminate(child.id());
    assert!(child.wait().unwrap().success());
    assert!(first.starts_with("switch-agent listening on"), "{first}");
}

#[test]
fn help_shows_no_empty_defaults() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!help.contains("[default: \"\"]"), "{help}");
    assert!(help.contains("--faults <SPEC>") && help.contains("[default: none]"), "{help}");
    assert!(help.contains("--max-pool-bytes <BYTES>"), "{help}");
}
