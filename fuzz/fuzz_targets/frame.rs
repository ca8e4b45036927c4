//! The frame decoder on a byte stream: frames come off the front of a buffer, the bytes consumed
//! never exceed the input, and reading the input in small pieces gives the same frames.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use paramserv::proto::wire::{Frame, HEADER_LEN, Limits, WireError, decode_frame};
use paramserv_fuzz::check_payload;

/// Small, so that a forged length cannot make every run reserve the 64 MiB default.
const LIMITS: Limits = Limits { max_frame: 1 << 16 };

/// Frames taken off `data` fed `chunk` bytes at a time, then how the stream ended: the error that
/// broke it, or the bytes left waiting for more.
fn drain(data: &[u8], chunk: usize) -> (Vec<Frame>, Result<usize, WireError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut consumed = 0;
    for (i, piece) in data.chunks(chunk).enumerate() {
        buf.extend_from_slice(piece);
        let fed = (i * chunk + piece.len()).min(data.len());
        loop {
            let before = buf.clone();
            match decode_frame(&mut buf, &LIMITS) {
                Ok(Some(frame)) => {
                    let used = before.len() - buf.len();
                    assert_eq!(used, HEADER_LEN + frame.payload_len());
                    assert!(frame.payload_len() <= LIMITS.max_frame as usize);
                    assert_eq!(&frame.payload[..], &before[HEADER_LEN..used]);
                    consumed += used;
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) must leave the buffer as it was");
                    break;
                }
                Err(e) => return (frames, Err(e)),
            }
            assert!(consumed <= fed, "consumed {consumed} bytes of {fed}");
            assert_eq!(consumed + buf.len(), fed);
        }
    }
    (frames, Ok(buf.len()))
}

fuzz_target!(|data: &[u8]| {
    let (frames, end) = drain(data, data.len().max(1));
    let chunk = 1 + data.last().map_or(0, |b| usize::from(*b) % 23);
    assert_eq!(drain(data, chunk), (frames.clone(), end), "reading in {chunk}-byte pieces changed the frames");
    for frame in &frames {
        let cut = frame.request_id as usize % (frame.payload.len() + 1);
        check_payload(frame.kind, &frame.payload, cut);
        if let Ok(m) = frame.message() {
            paramserv_fuzz::check_message(frame.kind, frame.request_id, &frame.payload, &m);
        }
    }
});
