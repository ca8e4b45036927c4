//! Drives the hello handshake of [`crate::proto::handshake`] over a [`Connection`].

use std::time::Duration;

use super::{Connection, LinkError};
use crate::proto::handshake;
use crate::proto::wire::{Hello, Limits, Message, NONCE_LEN, PeerRole};

/// Who we are: the job we belong to and, optionally, the shared secret.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// Job id every peer must present.
    pub job_id: String,
    /// Shared secret, if the cluster uses one.
    pub secret: Option<Vec<u8>>,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer refused us.
    #[error("refused by {peer}: {reason}")]
    Refused {
        /// Who refused.
        peer: String,
        /// Their reason.
        reason: String,
    },
    /// We refused the peer (the reason was sent to it).
    #[error("refused {peer}: {reason}")]
    Rejected {
        /// Who was refused.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The link failed.
    #[error("handshake with {peer} failed: {source}")]
    Link {
        /// The peer.
        peer: String,
        /// What failed.
        source: LinkError,
    },
    /// The peer sent something other than the next handshake step.
    #[error("handshake with {peer}: expected {expected}, got {got}")]
    Unexpected {
        /// The peer.
        peer: String,
        /// The step we waited for.
        expected: &'static str,
        /// What came instead.
        got: String,
    },
    /// The acceptor could not prove it knows the shared secret: not a member of our cluster.
    #[error("{peer} is not trusted: {reason}")]
    Untrusted {
        /// The peer.
        peer: String,
        /// What its welcome lacked.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("handshake with {peer} timed out after {after:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// How long we waited.
        after: Duration,
    },
}

async fn next(conn: &mut Connection, expected: &'static str, timeout: Duration) -> Result<Message, HandshakeError> {
    let peer = || conn.peer.clone();
    let frame = match tokio::time::timeout(timeout, conn.rx.recv()).await {
        Err(_) => return Err(HandshakeError::Timeout { peer: peer(), after: timeout }),
        Ok(Err(source)) => return Err(HandshakeError::Link { peer: peer(), source }),
        Ok(Ok(None)) => return Err(HandshakeError::Link { peer: peer(), source: LinkError::Closed }),
        Ok(Ok(Some(f))) => f,
    };
    frame.message().map_err(|e| HandshakeError::Unexpected {
        peer: peer(),
        expected,
        got: format!("undecodable bytes ({e})"),
    })
}

async fn send(conn: &Connection, msg: Message) -> Result<(), HandshakeError> {
    let frame = msg.encode(0).expect("handshake messages are small");
    conn.tx.send(frame).await.map_err(|source| HandshakeError::Link { peer: conn.peer.clone(), source })
}

/// Largest frame a peer may send before it is through the handshake: a hello is tiny.
pub const HANDSHAKE_MAX_FRAME: u32 = 64 << 10;

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the OS random source is available");
    n
}

/// Accepts a peer taking one of the roles in `accept`: challenge it, check its hello, then welcome
/// it (proving our own secret) or refuse it with the reason. Returns its hello.
pub async fn accept(
    conn: &mut Connection,
    auth: &Auth,
    roles: &[PeerRole],
    timeout: Duration,
) -> Result<Hello, HandshakeError> {
    under_handshake_cap(conn, async |conn| accept_limited(conn, auth, roles, timeout).await).await
}

async fn accept_limited(
    conn: &mut Connection,
    auth: &Auth,
    roles: &[PeerRole],
    timeout: Duration,
) -> Result<Hello, HandshakeError> {
    let challenge = nonce();
    send(conn, Message::Challenge { nonce: challenge }).await?;
    let hello = match next(conn, "hello", timeout).await {
        Ok(Message::Hello(h)) => h,
        Ok(other) => {
            let reason = format!("expected a hello, got {}", other.kind());
            let _ = send(conn, Message::Refused { reason: reason.clone() }).await;
            return Err(HandshakeError::Rejected { peer: conn.peer.clone(), reason });
        }
        Err(e) => {
            if let HandshakeError::Link { source: LinkError::Wire(w), .. } = &e {
                let _ = send(conn, Message::Refused { reason: format!("not a paramserv hello: {w}") }).await;
            }
            return Err(e);
        }
    };
    match handshake::check_hello(&hello, &challenge, &auth.job_id, auth.secret.as_deref(), roles) {
        Ok(proof) => {
            send(conn, Message::Welcome { proof }).await?;
            Ok(hello)
        }
        Err(reason) => {
            let _ = send(conn, Message::Refused { reason: reason.clone() }).await;
            Err(HandshakeError::Rejected { peer: conn.peer.clone(), reason })
        }
    }
}

/// Introduces us to an acceptor as `role`, and checks that it knows the secret too.
pub async fn initiate(
    conn: &mut Connection,
    auth: &Auth,
    role: PeerRole,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    under_handshake_cap(conn, async |conn| initiate_limited(conn, auth, role, timeout).await).await
}

/// Runs a handshake under [`HANDSHAKE_MAX_FRAME`], then gives the link its own cap back.
async fn under_handshake_cap<T>(conn: &mut Connection, handshake: impl AsyncFnOnce(&mut Connection) -> T) -> T {
    let limits = conn.rx.limits();
    conn.rx.set_limits(Limits { max_frame: HANDSHAKE_MAX_FRAME.min(limits.max_frame) });
    let result = handshake(conn).await;
    conn.rx.set_limits(limits);
    result
}

async fn initiate_limited(
    conn: &mut Connection,
    auth: &Auth,
    role: PeerRole,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    let challenge = match next(conn, "a challenge", timeout).await? {
        Message::Challenge { nonce } => nonce,
        Message::Refused { reason } => return Err(HandshakeError::Refused { peer: conn.peer.clone(), reason }),
        other => {
            return Err(HandshakeError::Unexpected {
                peer: conn.peer.clone(),
                expected: "a challenge",
                got: other.kind().to_string(),
            });
        }
    };
    let own = nonce();
    let secret = auth.secret.as_deref();
    send(conn, Message::Hello(handshake::hello(&auth.job_id, role, secret, &challenge, own))).await?;
    match next(conn, "welcome", timeout).await? {
        Message::Welcome { proof } => handshake::check_welcome(&proof, &own, &auth.job_id, role, secret)
            .map_err(|reason| HandshakeError::Untrusted { peer: conn.peer.clone(), reason }),
        Message::Refused { reason } => Err(HandshakeError::Refused { peer: conn.peer.clone(), reason }),
        other => Err(HandshakeError::Unexpected {
            peer: conn.peer.clone(),
            expected: "welcome",
            got: other.kind().to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::Limits;
    use crate::transport::{Net, Transport};

    async fn run(client: Auth, server: Auth) -> (Result<(), HandshakeError>, Result<Hello, HandshakeError>) {
        let net = Net::new(Transport::Inproc);
        let mut l = net.listen("s", Limits::default()).await.unwrap();
        let t = Duration::from_secs(5);
        let (mut a, mut b) = tokio::join!(async { net.connect("s", Limits::default()).await.unwrap() }, async {
            l.accept().await.unwrap()
        });
        tokio::join!(initiate(&mut a, &client, PeerRole::Worker, t), accept(&mut b, &server, &[PeerRole::Worker], t))
    }

    fn auth(job: &str, secret: Option<&str>) -> Auth {
        Auth { job_id: job.into(), secret: secret.map(|s| s.as_bytes().to_vec()) }
    }

    #[tokio::test]
    async fn same_job_and_secret_get_in() {
        let (c, s) = run(auth("j", Some("k")), auth("j", Some("k"))).await;
        c.unwrap();
        assert_eq!(s.unwrap().role, PeerRole::Worker);
    }

    #[tokio::test]
    async fn another_job_or_secret_is_refused_with_the_reason_on_both_sides() {
        for (client, server, why) in [
            (auth("other", None), auth("j", None), "job 'other'"),
            (auth("j", Some("bad")), auth("j", Some("k")), "does not match"),
            (auth("j", None), auth("j", Some("k")), "requires a shared secret"),
        ] {
            let (c, s) = run(client, server).await;
            let c = c.unwrap_err().to_string();
            let s = s.unwrap_err().to_string();
            assert!(c.contains(why) && c.starts_with("refused by"), "{c}");
            assert!(s.contains(why), "{s}");
        }
    }

    #[tokio::test]
    async fn an_acceptor_that_cannot_prove_the_secret_is_not_trusted() {
        // A rogue endpoint that welcomes anyone, as a stray process on a coordinator's port might.
        let net = Net::new(Transport::Inproc);
        let mut l = net.listen("rogue", Limits::default()).await.unwrap();
        let mut client = net.connect("rogue", Limits::default()).await.unwrap();
        let mut rogue = l.accept().await.unwrap();
        let fake = async move {
            send(&rogue, Message::Challenge { nonce: [1; NONCE_LEN] }).await.unwrap();
            let _hello = next(&mut rogue, "hello", Duration::from_secs(5)).await.unwrap();
            send(&rogue, Message::Welcome { proof: None }).await.unwrap();
            rogue
        };
        let me = auth("j", Some("k"));
        let (result, _rogue) = tokio::join!(initiate(&mut client, &me, PeerRole::Node, Duration::from_secs(5)), fake);
        let err = result.unwrap_err();
        assert!(matches!(err, HandshakeError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("did not prove it knows the shared secret"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let net = Net::new(Transport::Inproc);
        let mut l = net.listen("s", Limits::default()).await.unwrap();
        let _silent = net.connect("s", Limits::default()).await.unwrap();
        let mut b = l.accept().await.unwrap();
        let err = accept(&mut b, &auth("j", None), &[PeerRole::Worker], Duration::from_secs(3)).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout { .. }), "{err}");
    }
}
