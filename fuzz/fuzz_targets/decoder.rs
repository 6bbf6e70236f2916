//! Fuzzes the protocol-v1 decoder: arbitrary bytes, fed in arbitrary chunks, under an
//! arbitrary --max-frame. The decoder must never panic, never return a frame over the limit,
//! and every frame it returns must re-encode to exactly the bytes it consumed.

#![no_main]

use forkd::frame::{Decoder, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // The first two bytes choose the limit; the third the chunk size.
    let max = u32::from(u16::from_be_bytes([data[0], data[1]]));
    let chunk = usize::from(data[2]).max(1);
    let input = &data[3..];
    let mut decoder = Decoder::new(max);
    let mut consumed = 0;
    for piece in input.chunks(chunk) {
        decoder.extend(piece);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= max as usize);
                    let encoded = frame.encode();
                    assert_eq!(encoded, input[consumed..consumed + encoded.len()]);
                    consumed += HEADER_LEN + frame.payload.len();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert_eq!(decoder.buffered(), input.len() - consumed);
    let _ = decoder.finish();
});
