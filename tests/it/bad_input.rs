//! Bad input gets a clear error, and the server keeps serving everyone else.
//!
//! Raw-frame tests run inside a worker of a TCP local cluster: the worker opens extra connections
//! to its server, misbehaves on them, and then checks that its own pulls and pushes still work.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use paramserv::cluster::coordinator::run_coordinator;
use paramserv::cluster::local::{ClusterError, LocalCluster};
use paramserv::cluster::node::{NodeConfig, ServerConfig, run_node};
use paramserv::proto::coordinator::CoordinatorConfig;
use paramserv::proto::handshake;
use paramserv::proto::partition::{KeyRange, Partitioning};
use paramserv::proto::wire::{self, ErrorCode, HeaderRepr, KeysRef, Kind, Limits, Message, OutFrame, PeerRole};
use paramserv::transport::handshake::{Auth, HandshakeError, initiate};
use paramserv::transport::{Connection, Net, Transport};
use paramserv::worker::{Worker, WorkerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{bounded, custom, table};

fn auth() -> Auth {
    // LocalCluster's identity.
    Auth { job_id: "local".into(), secret: None }
}

/// A handshaken connection to server 0, speaking frames.
async fn connect(worker: &Worker) -> Connection {
    let addr = worker.server_address(0).unwrap();
    let mut conn = Net::Tcp.connect(addr, Limits::default()).await.unwrap();
    initiate(&mut conn, &auth(), PeerRole::Client, Duration::from_secs(5)).await.unwrap();
    conn
}

/// A handshaken raw socket to server 0, for bytes no encoder would produce.
async fn raw(worker: &Worker) -> TcpStream {
    let mut s = TcpStream::connect(worker.server_address(0).unwrap()).await.unwrap();
    let Message::Challenge { nonce } = read_frame(&mut s).await.unwrap().message().unwrap() else {
        panic!("expected a challenge")
    };
    let hello = Message::Hello(handshake::hello("local", PeerRole::Client, None, &nonce, [3; 16])).encode(0).unwrap();
    write_frame(&mut s, &hello).await;
    assert_eq!(read_frame(&mut s).await.unwrap().message().unwrap(), Message::Welcome { proof: None });
    s
}

async fn write_frame(s: &mut TcpStream, f: &OutFrame) {
    s.write_all(&f.header).await.unwrap();
    s.write_all(&f.payload).await.unwrap();
    s.write_all(&f.bulk).await.unwrap();
}

/// The next frame, or `None` at end of stream.
async fn read_frame(s: &mut TcpStream) -> Option<wire::Frame> {
    let mut buf = BytesMut::new();
    loop {
        if let Some(f) = wire::decode_frame(&mut buf, &Limits::default()).unwrap() {
            return Some(f);
        }
        if s.read_buf(&mut buf).await.unwrap() == 0 {
            return None;
        }
    }
}

async fn request(conn: &mut Connection, frame: OutFrame) -> Message {
    let id = frame.request_id();
    conn.tx.send(frame).await.unwrap();
    let reply = conn.rx.recv().await.unwrap().unwrap();
    assert_eq!(reply.request_id, id);
    reply.message().unwrap()
}

fn error_code(m: Message) -> (ErrorCode, String) {
    match m {
        Message::Error { code, message } => (code, message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// The worker's own traffic still works.
async fn still_served(worker: &Worker) -> Result<(), WorkerError> {
    worker.push(0, &[1, 2], &[0.5; 8]).await?;
    let v = worker.pull(0, KeyRange::new(0, 4).unwrap()).await?;
    assert_eq!(v.len(), 16);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_replies_and_the_server_keeps_serving() {
    let job = custom(vec![table("t", 100, 4, Partitioning::Range)]);
    bounded(LocalCluster::new(1, 1, Transport::Tcp).run(&job, |worker: Worker| async move {
        let mut conn = connect(&worker).await;
        let cases = [
            (wire::encode_pull(1, 9, None, KeysRef::List(&[1])).unwrap(), ErrorCode::UnknownTable, "unknown table 9"),
            (
                wire::encode_pull(2, 0, None, KeysRef::List(&[3, 100])).unwrap(),
                ErrorCode::KeyOutOfRange,
                "key 100 is out of range",
            ),
            (
                wire::encode_pull(3, 0, None, KeysRef::Range(KeyRange::new(90, 101).unwrap())).unwrap(),
                ErrorCode::KeyOutOfRange,
                "out of range",
            ),
            (
                wire::encode_push(4, 0, None, KeysRef::List(&[1]), &[1.0; 3]).unwrap(),
                ErrorCode::WrongDimension,
                "dimension 4",
            ),
            (
                wire::encode_push(5, 0, None, KeysRef::List(&[1, 2]), &[1.0; 4]).unwrap(),
                ErrorCode::LengthMismatch,
                "1 rows of values for 2 keys",
            ),
            (
                OutFrame::new(Kind::Push, 6, bytes::Bytes::from_static(&[0, 0, 0])).unwrap(),
                ErrorCode::Malformed,
                "truncated",
            ),
            (Message::Start.encode(7).unwrap(), ErrorCode::Unsupported, "Start"),
        ];
        for (frame, code, text) in cases {
            let (got, msg) = error_code(request(&mut conn, frame).await);
            assert_eq!(got, code, "{msg}");
            assert!(msg.contains(text), "'{msg}' should mention '{text}'");
        }
        // The same mistakes through the worker API are caught before anything is sent.
        assert!(matches!(worker.table("nope"), Err(WorkerError::UnknownTableName(_))));
        let err = worker.pull(0, &[100]).await.unwrap_err();
        assert!(err.to_string().contains("key 100 is out of range"), "{err}");
        let err = worker.push(0, &[1], &[1.0; 3]).await.unwrap_err();
        assert!(matches!(err, WorkerError::WrongLength { want: 4, got: 3, .. }), "{err}");
        let err = worker.pull(7, &[1]).await.unwrap_err();
        assert!(err.to_string().contains("unknown table 7"), "{err}");
        // After all that, the connection and the worker still work.
        assert!(matches!(
            request(&mut conn, wire::encode_pull(8, 0, None, KeysRef::List(&[1])).unwrap()).await,
            Message::PullReply { .. }
        ));
        still_served(&worker).await
    }))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_streams_close_only_their_connection() {
    let job = custom(vec![table("t", 100, 4, Partitioning::Range)]);
    bounded(LocalCluster::new(1, 1, Transport::Tcp).run(&job, |worker: Worker| async move {
        // A frame over the size limit: refused before anything is allocated; told why; closed.
        let mut s = raw(&worker).await;
        let huge = HeaderRepr { kind: Kind::Push, payload_len: u32::MAX, request_id: 1 }.to_bytes();
        s.write_all(&huge).await.unwrap();
        let notice = read_frame(&mut s).await.expect("a closing notice");
        let (code, msg) = error_code(notice.message().unwrap());
        assert_eq!((code, notice.request_id), (ErrorCode::Malformed, 0));
        assert!(msg.contains("exceeds the limit"), "{msg}");
        assert!(read_frame(&mut s).await.is_none(), "the server closed the connection");

        // Bad magic after the handshake.
        let mut s = raw(&worker).await;
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (_, msg) = error_code(read_frame(&mut s).await.unwrap().message().unwrap());
        assert!(msg.contains("bad magic"), "{msg}");

        // A peer that vanishes mid-frame.
        let mut s = raw(&worker).await;
        let f = wire::encode_push(1, 0, None, KeysRef::List(&[1]), &[1.0; 4]).unwrap();
        s.write_all(&f.header).await.unwrap();
        s.write_all(&f.payload[..5]).await.unwrap();
        drop(s);

        // A stray client that never says hello is refused with a reason.
        let mut s = TcpStream::connect(worker.server_address(0).unwrap()).await.unwrap();
        assert!(matches!(read_frame(&mut s).await.unwrap().message().unwrap(), Message::Challenge { .. }));
        s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        let Message::Refused { reason } = read_frame(&mut s).await.unwrap().message().unwrap() else {
            panic!("expected a refusal")
        };
        assert!(reason.contains("not a paramserv hello"), "{reason}");

        still_served(&worker).await
    }))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_another_job_or_without_the_secret_are_refused() {
    let job = custom(vec![table("t", 10, 4, Partitioning::Range)]);
    let secret = Auth { job_id: "prod".into(), secret: Some(b"s3cret".to_vec()) };
    let cluster = LocalCluster { auth: secret, ..LocalCluster::new(1, 1, Transport::Tcp) };
    bounded(cluster.run(&job, |worker: Worker| async move {
        let addr = worker.server_address(0).unwrap().to_owned();
        for (who, reason) in [
            (Auth { job_id: "prod".into(), secret: None }, "requires a shared secret"),
            (Auth { job_id: "prod".into(), secret: Some(b"guess".to_vec()) }, "does not match"),
            (Auth { job_id: "staging".into(), secret: Some(b"s3cret".to_vec()) }, "job 'staging'"),
        ] {
            let mut conn = Net::Tcp.connect(&addr, Limits::default()).await.unwrap();
            let err = initiate(&mut conn, &who, PeerRole::Worker, Duration::from_secs(5)).await.unwrap_err();
            assert!(matches!(&err, HandshakeError::Refused { reason: r, .. } if r.contains(reason)), "{err}");
        }
        still_served(&worker).await
    }))
    .await
    .unwrap();
}

fn node(coordinator: &str, server: bool, workers: u32, timeout: Duration) -> NodeConfig {
    NodeConfig {
        coordinator: coordinator.into(),
        auth: auth(),
        server: server.then(|| ServerConfig { listen: "server-*".into(), advertise: None }),
        workers,
        label: format!("test {}", if server { "server" } else { "worker" }),
        join_timeout: timeout,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_joins_fails_the_job_naming_who_is_missing() {
    let net = Net::new(Transport::Inproc);
    let listener = net.listen("coordinator", Limits::default()).await.unwrap();
    let job = custom(vec![table("t", 10, 1, Partitioning::Range)]);
    let timeout = Duration::from_millis(800);
    let cfg = CoordinatorConfig {
        servers: 1,
        workers: 2,
        job: job.to_toml(),
        join_timeout: timeout,
        heartbeat_timeout: Duration::from_secs(30),
        consistency: Default::default(),
        run: 1,
    };
    let coord = tokio::spawn(run_coordinator(listener, cfg, auth()));
    let server = tokio::spawn(run_node(
        net.clone(),
        node("coordinator", true, 0, Duration::from_secs(30)),
        |_w: Worker| async { Ok(()) },
    ));
    let worker = tokio::spawn(run_node(
        net.clone(),
        node("coordinator", false, 1, Duration::from_secs(30)),
        |_w: Worker| async { Ok(()) },
    ));
    let reason = bounded(coord).await.unwrap().unwrap_err();
    assert!(reason.contains("1 of 2 worker(s) joined") && reason.contains("missing 1 worker(s)"), "{reason}");
    assert!(reason.contains("server from test server"), "{reason}");
    // The nodes that did join are told, instead of waiting forever.
    for node in [server, worker] {
        let err = bounded(node).await.unwrap().unwrap_err().to_string();
        assert!(err.contains("missing 1 worker(s)"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_nobody_runs_is_an_error_within_the_join_timeout() {
    let started = std::time::Instant::now();
    let net = Net::new(Transport::Inproc);
    let err =
        bounded(run_node(net, node("nobody", false, 1, Duration::from_millis(500)), |_w: Worker| async { Ok(()) }))
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("cannot reach the coordinator at nobody"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_reports_its_reason_to_every_node() {
    let job = custom(vec![table("t", 10, 1, Partitioning::Range)]);
    let err = bounded(LocalCluster::new(1, 2, Transport::Inproc).run(&job, |w: Worker| async move {
        if w.rank() == 1 {
            return Err(WorkerError::App("disk full".into()));
        }
        // Worker 0 waits at a barrier worker 1 never reaches: it must be released by the abort.
        w.barrier(&[]).await.map(|_| ())
    }))
    .await
    .unwrap_err();
    let ClusterError::Failed(reason) = err else { panic!("expected a failed job, got {err}") };
    assert!(reason.contains("worker 1") && reason.contains("disk full"), "{reason}");
}

#[test]
fn an_in_process_frame_whose_length_disagrees_with_its_header_is_refused() {
    let mut out = wire::encode_push(1, 0, None, KeysRef::List(&[1]), &[1.0]).unwrap();
    out.payload = {
        let mut b = BytesMut::from(&out.payload[..]);
        b.put_u8(0);
        b.freeze()
    };
    let err = wire::Frame::from_out(out, &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("header says 17 bytes, payload has 18"), "{err}");
}
