//! The QUIC device protocol's frames (`transport/quic/frame.rs`): a stream's length prefix and
//! header as the gateway reads them (request, reply to a push, push), and a request header turned
//! into a call by the device protocol's rules over the operation table (`quic::call_of`), as a
//! QUIC request stream is.
//!
//! Input: the bytes at the start of a stream (a 4-byte big-endian length, the header JSON, the
//! body after it).
#![no_main]

use bytes::Bytes;
use edgecar::transport::quic::{self, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((prefix, rest)) = data.split_first_chunk::<{ frame::PREFIX }>() else {
        return;
    };
    let Ok(len) = frame::length(*prefix, 4096) else {
        return;
    };
    let Some((json, body)) = rest.split_at_checked(len) else {
        return;
    };
    let _ = frame::reply(json);
    let _ = frame::push(json);
    let Ok(r) = frame::request(json) else {
        return;
    };
    // What the gateway writes back must read as what it wrote.
    assert_eq!(
        frame::request(&frame::encode(&r)[frame::PREFIX..]).ok(),
        Some(r.clone())
    );
    let _ = quic::call_of("sensor-1", r, Bytes::copy_from_slice(body));
});
