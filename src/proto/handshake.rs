//! The hello handshake: which peers an acceptor lets in, and why it refuses the others.
//!
//! The acceptor opens with a fresh random nonce ([`Message::Challenge`]); the initiator answers with
//! [`Hello`]: protocol version, role, job id and, when a shared secret is configured, an HMAC-SHA256
//! over the nonce, job id and role. The secret itself never crosses the wire, and a recorded
//! answer is useless against the next nonce. [`check_hello`] is the acceptor's whole decision.
//!
//! [`Message::Challenge`]: super::wire::Message::Challenge

use hmac::{KeyInit, Mac};

use super::wire::{Hello, NONCE_LEN, PROOF_LEN, PeerRole};

/// Protocol version carried in [`Hello::version`].
pub const PROTOCOL_VERSION: u16 = 1;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(secret: &[u8], nonce: &[u8; NONCE_LEN], job_id: &str, role: PeerRole) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(b"paramserv hello v1\0");
    m.update(nonce);
    m.update(&(job_id.len() as u64).to_le_bytes());
    m.update(job_id.as_bytes());
    m.update(&[role as u8]);
    m
}

/// The proof an initiator with `secret` sends for this challenge.
pub fn proof(secret: &[u8], nonce: &[u8; NONCE_LEN], job_id: &str, role: PeerRole) -> [u8; PROOF_LEN] {
    mac(secret, nonce, job_id, role).finalize().into_bytes().into()
}

/// Builds the initiator's hello.
pub fn hello(job_id: &str, role: PeerRole, secret: Option<&[u8]>, nonce: &[u8; NONCE_LEN]) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        role,
        job_id: job_id.to_owned(),
        proof: secret.map(|s| proof(s, nonce, job_id, role)),
    }
}

/// Decides whether to let the peer in. `Err` holds the reason sent back in `Refused`.
pub fn check_hello(hello: &Hello, nonce: &[u8; NONCE_LEN], job_id: &str, secret: Option<&[u8]>) -> Result<(), String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!("peer speaks protocol version {}, this node speaks {PROTOCOL_VERSION}", hello.version));
    }
    if hello.job_id != job_id {
        return Err(format!("peer belongs to job '{}', this node serves job '{job_id}'", hello.job_id));
    }
    match (secret, &hello.proof) {
        (None, None) => Ok(()),
        (Some(_), None) => {
            Err("this cluster requires a shared secret (--secret or PS_SECRET) and the peer offered none".into())
        }
        (None, Some(_)) => Err("the peer offered a shared-secret proof but this node has no secret configured".into()),
        (Some(s), Some(p)) => {
            mac(s, nonce, job_id, hello.role).verify_slice(p).map_err(|_| "shared secret does not match".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];

    #[test]
    fn matching_secret_and_job_are_accepted() {
        let h = hello("job-a", PeerRole::Worker, Some(b"s3cret"), &NONCE);
        assert_eq!(check_hello(&h, &NONCE, "job-a", Some(b"s3cret")), Ok(()));
        let open = hello("job-a", PeerRole::Node, None, &NONCE);
        assert_eq!(check_hello(&open, &NONCE, "job-a", None), Ok(()));
    }

    #[test]
    fn every_mismatch_is_refused_with_its_reason() {
        let h = hello("job-a", PeerRole::Worker, Some(b"s3cret"), &NONCE);
        let refuse = |h: &Hello, nonce: &[u8; NONCE_LEN], job: &str, secret: Option<&[u8]>| {
            check_hello(h, nonce, job, secret).unwrap_err()
        };
        assert!(refuse(&h, &NONCE, "job-b", Some(b"s3cret")).contains("job 'job-a'"));
        assert!(refuse(&h, &NONCE, "job-a", Some(b"other")).contains("does not match"));
        assert!(refuse(&h, &[8; NONCE_LEN], "job-a", Some(b"s3cret")).contains("does not match"), "replayed proof");
        assert!(refuse(&h, &NONCE, "job-a", None).contains("no secret configured"));
        let open = hello("job-a", PeerRole::Worker, None, &NONCE);
        assert!(refuse(&open, &NONCE, "job-a", Some(b"s3cret")).contains("requires a shared secret"));
        let mut old = open.clone();
        old.version = 0;
        assert!(refuse(&old, &NONCE, "job-a", None).contains("protocol version 0"));
        // The proof binds the role: a worker's answer does not let a node in.
        let mut as_node = h.clone();
        as_node.role = PeerRole::Node;
        assert!(refuse(&as_node, &NONCE, "job-a", Some(b"s3cret")).contains("does not match"));
    }
}
