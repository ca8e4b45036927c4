//! The hello handshake: which peers an acceptor lets in, why it refuses the others, and how the
//! initiator knows it reached a member of its own cluster.
//!
//! ```text
//! acceptor  -> Challenge { nonce_a }
//! initiator -> Hello { version, role, job, nonce_i, proof = MAC(secret, "hello", nonce_a, job, role) }
//! acceptor  -> Welcome { proof = MAC(secret, "welcome", nonce_i, job, role) }   or   Refused { reason }
//! ```
//!
//! With a shared secret (`--secret`, `PS_SECRET`) both sides prove they know it, over a nonce the
//! other side just chose, so the secret never crosses the wire, a recorded answer is useless, and
//! a stray or hostile acceptor cannot pose as the coordinator. The acceptor checks the proof before
//! anything else that depends on the peer's claims, so an unauthenticated peer learns nothing
//! about the job; a peer that proves the secret but belongs to another job is told so. The MAC is
//! HMAC-SHA256 with a direction label, so one side's proof is never valid for the other side.
//! [`check_hello`] and [`check_welcome`] are the two sides' whole decisions.

use hmac::{KeyInit, Mac};

use super::wire::{Hello, NONCE_LEN, PROOF_LEN, PeerRole};

/// Protocol version carried in [`Hello::version`]. 2: `Assign` carries the run id, so a node of
/// an older build is refused at the handshake rather than failing to decode its assignment.
/// 3: pulls and pushes may name their keys as a delta-coded list (key set tag 2), which older
/// builds cannot read.
pub const PROTOCOL_VERSION: u16 = 3;
/// Longest piece of a peer's claim quoted back in a refusal.
const QUOTE_MAX: usize = 64;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Which side a proof speaks for.
#[derive(Clone, Copy, Debug)]
enum Side {
    Initiator,
    Acceptor,
}

fn mac(secret: &[u8], side: Side, nonce: &[u8; NONCE_LEN], job_id: &str, role: PeerRole) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(match side {
        Side::Initiator => b"paramserv hello v1\0",
        Side::Acceptor => b"paramserv welcome v1",
    });
    m.update(nonce);
    m.update(&(job_id.len() as u64).to_le_bytes());
    m.update(job_id.as_bytes());
    m.update(&[role as u8]);
    m
}

fn prove(secret: &[u8], side: Side, nonce: &[u8; NONCE_LEN], job_id: &str, role: PeerRole) -> [u8; PROOF_LEN] {
    mac(secret, side, nonce, job_id, role).finalize().into_bytes().into()
}

fn verify(secret: &[u8], side: Side, nonce: &[u8; NONCE_LEN], job_id: &str, role: PeerRole, proof: &[u8]) -> bool {
    mac(secret, side, nonce, job_id, role).verify_slice(proof).is_ok()
}

/// Builds the initiator's hello: `challenge` is the acceptor's nonce, `own_nonce` a fresh one for
/// the acceptor to prove itself over.
pub fn hello(
    job_id: &str,
    role: PeerRole,
    secret: Option<&[u8]>,
    challenge: &[u8; NONCE_LEN],
    own_nonce: [u8; NONCE_LEN],
) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        role,
        job_id: job_id.to_owned(),
        nonce: own_nonce,
        proof: secret.map(|s| prove(s, Side::Initiator, challenge, job_id, role)),
    }
}

/// The acceptor's decision on `hello`, answering its challenge `nonce`. `Ok` holds the welcome's
/// proof (present when this node has a secret); `Err` the reason sent back in `Refused`.
pub fn check_hello(
    hello: &Hello,
    nonce: &[u8; NONCE_LEN],
    job_id: &str,
    secret: Option<&[u8]>,
    accept: &[PeerRole],
) -> Result<Option<[u8; PROOF_LEN]>, String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!("peer speaks protocol version {}, this node speaks {PROTOCOL_VERSION}", hello.version));
    }
    // The proof covers the job the peer claims, so it is checked against that claim: a peer that
    // knows the secret but names another job is told the real problem below.
    match (secret, &hello.proof) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(
                "this cluster requires a shared secret (--secret or PS_SECRET) and the peer offered none".into()
            );
        }
        (None, Some(_)) => {
            return Err("the peer offered a shared-secret proof but this node has no secret configured".into());
        }
        (Some(s), Some(p)) => {
            if !verify(s, Side::Initiator, nonce, &hello.job_id, hello.role, p) {
                return Err("shared secret does not match".into());
            }
        }
    }
    if hello.job_id != job_id {
        return Err(format!("peer belongs to job '{}', this node serves job '{job_id}'", quote(&hello.job_id)));
    }
    if !accept.contains(&hello.role) {
        return Err(format!("a {:?} may not connect here (this endpoint takes {accept:?})", hello.role));
    }
    Ok(secret.map(|s| prove(s, Side::Acceptor, &hello.nonce, job_id, hello.role)))
}

/// The initiator's check of the acceptor's welcome, over the nonce it sent in its hello.
pub fn check_welcome(
    proof: &Option<[u8; PROOF_LEN]>,
    own_nonce: &[u8; NONCE_LEN],
    job_id: &str,
    role: PeerRole,
    secret: Option<&[u8]>,
) -> Result<(), String> {
    match (secret, proof) {
        (None, None) => Ok(()),
        (None, Some(_)) => Ok(()),
        (Some(_), None) => Err("the peer did not prove it knows the shared secret".into()),
        (Some(s), Some(p)) => {
            if verify(s, Side::Acceptor, own_nonce, job_id, role, p) {
                Ok(())
            } else {
                Err("the peer's proof of the shared secret is wrong".into())
            }
        }
    }
}

/// A peer's string, cut to a length fit for an error message.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHALLENGE: [u8; NONCE_LEN] = [7; NONCE_LEN];
    const OWN: [u8; NONCE_LEN] = [9; NONCE_LEN];
    const ANY: &[PeerRole] = &[PeerRole::Node, PeerRole::Worker, PeerRole::Client];

    fn accept(h: &Hello, job: &str, secret: Option<&[u8]>) -> Result<Option<[u8; PROOF_LEN]>, String> {
        check_hello(h, &CHALLENGE, job, secret, ANY)
    }

    #[test]
    fn both_sides_prove_the_secret() {
        let h = hello("job-a", PeerRole::Worker, Some(b"s3cret"), &CHALLENGE, OWN);
        let welcome = accept(&h, "job-a", Some(b"s3cret")).unwrap();
        assert!(welcome.is_some());
        assert_eq!(check_welcome(&welcome, &OWN, "job-a", PeerRole::Worker, Some(b"s3cret")), Ok(()));
        let open = hello("job-a", PeerRole::Node, None, &CHALLENGE, OWN);
        assert_eq!(accept(&open, "job-a", None), Ok(None));
        assert_eq!(check_welcome(&None, &OWN, "job-a", PeerRole::Node, None), Ok(()));
    }

    #[test]
    fn an_acceptor_without_the_secret_is_not_trusted() {
        for (proof, why) in [(None, "did not prove"), (Some([0; PROOF_LEN]), "proof of the shared secret is wrong")] {
            let err = check_welcome(&proof, &OWN, "job-a", PeerRole::Node, Some(b"s3cret")).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        // A welcome proof over another nonce (a replay) or from the initiator's side is refused.
        let h = hello("job-a", PeerRole::Node, Some(b"s3cret"), &CHALLENGE, [1; NONCE_LEN]);
        let replayed = accept(&h, "job-a", Some(b"s3cret")).unwrap();
        assert!(check_welcome(&replayed, &OWN, "job-a", PeerRole::Node, Some(b"s3cret")).is_err());
        assert!(check_welcome(&h.proof, &CHALLENGE, "job-a", PeerRole::Node, Some(b"s3cret")).is_err());
    }

    #[test]
    fn every_mismatch_is_refused_with_its_reason() {
        let h = hello("job-a", PeerRole::Worker, Some(b"s3cret"), &CHALLENGE, OWN);
        let refuse = |h: &Hello, nonce: &[u8; NONCE_LEN], job: &str, secret: Option<&[u8]>| {
            check_hello(h, nonce, job, secret, ANY).unwrap_err()
        };
        assert!(refuse(&h, &CHALLENGE, "job-b", Some(b"s3cret")).contains("job 'job-a'"));
        assert!(refuse(&h, &CHALLENGE, "job-a", Some(b"other")).contains("does not match"));
        assert!(refuse(&h, &[8; NONCE_LEN], "job-a", Some(b"s3cret")).contains("does not match"), "replayed proof");
        assert!(refuse(&h, &CHALLENGE, "job-a", None).contains("no secret configured"));
        let open = hello("job-a", PeerRole::Worker, None, &CHALLENGE, OWN);
        assert!(refuse(&open, &CHALLENGE, "job-a", Some(b"s3cret")).contains("requires a shared secret"));
        let mut old = open.clone();
        old.version = 0;
        assert!(refuse(&old, &CHALLENGE, "job-a", None).contains("protocol version 0"));
        // The proof binds the role: a worker's answer does not let a node in.
        let mut as_node = h.clone();
        as_node.role = PeerRole::Node;
        assert!(refuse(&as_node, &CHALLENGE, "job-a", Some(b"s3cret")).contains("does not match"));
        // Roles an endpoint does not take are refused.
        let err = check_hello(&h, &CHALLENGE, "job-a", Some(b"s3cret"), &[PeerRole::Node]).unwrap_err();
        assert!(err.contains("Worker may not connect here"), "{err}");
    }

    #[test]
    fn an_unauthenticated_peer_learns_nothing_about_the_job() {
        let wrong = hello("guess", PeerRole::Worker, Some(b"not-it"), &CHALLENGE, OWN);
        let err = accept(&wrong, "secret-project", Some(b"s3cret")).unwrap_err();
        assert!(!err.contains("secret-project"), "{err}");
        let anonymous = hello("guess", PeerRole::Worker, None, &CHALLENGE, OWN);
        assert!(!accept(&anonymous, "secret-project", Some(b"s3cret")).unwrap_err().contains("secret-project"));
    }

    #[test]
    fn long_claims_are_quoted_short() {
        let h = hello(&"x".repeat(10_000), PeerRole::Worker, None, &CHALLENGE, OWN);
        let err = accept(&h, "j", None).unwrap_err();
        assert!(err.len() < 200, "{} bytes", err.len());
    }
}
