//! The agent daemon and the all-reduce client over real loopback sockets (127.0.0.1, port 0),
//! with the seeded fault injector on every socket instead of `tc netem`.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use paramserv_switch::client::{AllReduce, ClientConfig, ClientError};
use paramserv_switch::daemon::{DaemonConfig, SpawnedDaemon};
use paramserv_switch::datapath::{DatapathChoice, DatapathKind, Faults};
use paramserv_switch::proto::agent::JobParams;
use paramserv_switch::proto::endpoint::EndpointError;
use paramserv_switch::proto::fixed::reference_sum;
use paramserv_switch::proto::packet::RefuseReason;

fn agent(faults: Faults, datapath: DatapathChoice) -> SpawnedDaemon {
    let mut config = DaemonConfig::new("127.0.0.1:0".parse().unwrap());
    config.faults = faults;
    config.seed = 99;
    config.datapath = datapath;
    SpawnedDaemon::spawn(config).expect("bind the agent")
}

fn inputs(workers: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..workers)
        .map(|_| {
            (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Magnitudes over many octaves, so chunks get different exponents.
                    ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2f32.powi((i / 300 % 24) as i32 - 12)
                })
                .collect()
        })
        .collect()
}

/// Runs one all-reduce per worker thread; returns each worker's result and retransmit count.
fn run(
    addr: SocketAddr,
    job: u32,
    params: JobParams,
    data: &[Vec<f32>],
    faults: Faults,
    datapath: DatapathChoice,
) -> Vec<(Vec<f32>, u64)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(w, input)| {
                s.spawn(move || {
                    let mut config = ClientConfig::new(addr, job, w as u16, params);
                    config.faults = faults;
                    config.seed = 1000 + w as u64;
                    config.datapath = datapath;
                    config.timeout = Duration::from_secs(60);
                    let mut client = AllReduce::connect(config).expect("join");
                    let mut out = input.clone();
                    client.all_reduce(&mut out).expect("all-reduce");
                    // A second operation on the same job (rounds continue), without copies.
                    let mut again = input.clone();
                    client.all_reduce_vec(&mut again).expect("second all-reduce");
                    assert_eq!(out, again, "worker {w}: the same inputs give the same sum");
                    let retransmits = client.stats().retransmits;
                    client.leave().expect("leave");
                    (out, retransmits)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker thread")).collect()
    })
}

fn check(results: &[(Vec<f32>, u64)], data: &[Vec<f32>], values: u16) {
    let refs: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
    let expected = reference_sum(&refs, values as usize).unwrap();
    for (w, (out, _)) in results.iter().enumerate() {
        assert!(
            out.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
            "worker {w}: result differs from the fixed-point reference"
        );
    }
}

#[test]
fn two_to_eight_workers_match_the_reference_without_and_with_five_percent_loss() {
    for workers in [2usize, 3, 8] {
        let params = JobParams { workers: workers as u16, slots: 32, values: 64 };
        let data = inputs(workers, 64 * 150 + 3, workers as u64);
        for loss in [0.0, 0.05] {
            let faults = Faults { drop: loss, ..Faults::default() };
            let daemon = agent(faults, DatapathChoice::Auto);
            let results = run(daemon.addr(), 1, params, &data, faults, DatapathChoice::Auto);
            check(&results, &data, params.values);
            let stats = daemon.stop().unwrap();
            if loss > 0.0 {
                let retransmits: u64 = results.iter().map(|r| r.1).sum();
                assert!(retransmits > 0, "5% loss needed retransmissions");
                let served: u64 = stats.jobs.values().map(|j| j.retransmits_served).sum();
                assert!(served > 0, "lost results were served from the shadow copies: {stats:?}");
            }
        }
    }
}

#[test]
fn duplicates_and_reordering_on_every_datapath() {
    let faults = Faults { drop: 0.02, duplicate: 0.05, reorder: 0.05 };
    let params = JobParams { workers: 4, slots: 16, values: 256 };
    let data = inputs(4, 256 * 40, 7);
    for kind in DatapathKind::ALL {
        let choice: DatapathChoice = kind.name().parse().unwrap();
        if let Err(e) = paramserv_switch::datapath::probe(kind) {
            eprintln!("skipping {kind}: {e}");
            continue;
        }
        let daemon = agent(faults, choice);
        assert_eq!(daemon.datapath(), kind);
        let results = run(daemon.addr(), 2, params, &data, faults, choice);
        check(&results, &data, params.values);
        let stats = daemon.stop().unwrap();
        let dups: u64 = stats.jobs.values().map(|j| j.duplicates + j.stale + j.retransmits_served).sum();
        assert!(dups > 0, "{kind}: duplicated packets reached the agent: {stats:?}");
    }
}

#[test]
fn two_jobs_at_once_and_garbage_on_the_agent_socket() {
    let daemon = agent(Faults::default(), DatapathChoice::Auto);
    let addr = daemon.addr();
    let a = (JobParams { workers: 2, slots: 8, values: 64 }, inputs(2, 64 * 100, 11));
    let b = (JobParams { workers: 3, slots: 4, values: 128 }, inputs(3, 128 * 50 + 9, 12));
    let garbage = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0u64;
        for n in 0..600u32 {
            let mut d = n.to_be_bytes().repeat((n % 40) as usize);
            if n % 2 == 0 && d.len() >= 4 {
                d[..4].copy_from_slice(&[0x53, 0x57, 1, 1]);
            }
            s.send_to(&d, addr).unwrap();
            sent += 1;
        }
        sent
    });
    let (ra, rb) = std::thread::scope(|s| {
        let ja = s.spawn(|| run(addr, 10, a.0, &a.1, Faults::default(), DatapathChoice::Auto));
        let jb = s.spawn(|| run(addr, 20, b.0, &b.1, Faults::default(), DatapathChoice::Auto));
        (ja.join().unwrap(), jb.join().unwrap())
    });
    let sent = garbage.join().unwrap();
    // Every garbage datagram is now queued at the agent; a job run after it is processed after it.
    let c = (JobParams { workers: 1, slots: 2, values: 8 }, inputs(1, 20, 13));
    check(&run(addr, 30, c.0, &c.1, Faults::default(), DatapathChoice::Auto), &c.1, c.0.values);
    check(&ra, &a.1, a.0.values);
    check(&rb, &b.1, b.0.values);
    let stats = daemon.stop().unwrap();
    assert_eq!(stats.agent.malformed, sent, "the garbage was counted as malformed: {stats:?}");
    assert_eq!(stats.jobs.len(), 3, "all jobs ran on the agent");
}

#[test]
fn a_conflicting_job_is_refused_and_a_missing_agent_times_out() {
    let daemon = agent(Faults::default(), DatapathChoice::Auto);
    let params = JobParams { workers: 2, slots: 4, values: 16 };
    let _first = AllReduce::connect(ClientConfig::new(daemon.addr(), 5, 0, params)).unwrap();
    let other = JobParams { slots: 8, ..params };
    match AllReduce::connect(ClientConfig::new(daemon.addr(), 5, 1, other)) {
        Err(ClientError::Endpoint(EndpointError::Refused { job: 5, reason: RefuseReason::JobMismatch })) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nobody listens on a port we bound and closed.
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = ClientConfig::new(dead, 1, 0, params);
    config.timeout = Duration::from_millis(300);
    match AllReduce::connect(config) {
        Err(ClientError::Timeout { what: "join", .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
}
