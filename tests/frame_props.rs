//! Property tests of the frame decoder: any sequence of frames, cut into any chunks, decodes
//! to the same frames; any bytes at all decode to frames or one clean error, never a panic.

use forkd::frame::{Decoder, Frame, HEADER_LEN, Kind};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Data),
        Just(Kind::Error),
        Just(Kind::Ping),
        Just(Kind::Pong)
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (kind(), proptest::collection::vec(any::<u8>(), 0..600))
        .prop_map(|(kind, payload)| Frame::new(kind, payload))
}

/// Cuts `bytes` at the given fractions into chunks (some empty).
fn chunks(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| (*c as usize * bytes.len()) / u16::MAX as usize)
        .collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        out.push(bytes[start..p].to_vec());
        start = p;
    }
    out
}

/// A reader that hands out its bytes in the given pieces, one per read (never more than the
/// caller asks for), as a socket does when segments arrive apart.
struct Pieces {
    chunks: std::collections::VecDeque<Vec<u8>>,
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.chunks.front_mut() {
            if front.is_empty() {
                self.chunks.pop_front();
                continue;
            }
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            front.drain(..n);
            return Ok(n);
        }
        Ok(0)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_frames_read_in_any_splits_decode_to_the_same_frames(
        frames in proptest::collection::vec(frame(), 0..20),
        cuts in proptest::collection::vec(any::<u16>(), 0..40),
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut reader = Pieces { chunks: chunks(&bytes, &cuts).into() };
        let mut decoder = Decoder::new(600);
        let mut got = Vec::new();
        loop {
            while let Some(f) = decoder.decode().unwrap() {
                got.push(f);
            }
            if decoder.read_from(&mut reader).unwrap() == 0 {
                break;
            }
        }
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert!(decoder.finish().is_ok());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn any_frames_in_any_chunks_decode_to_the_same_frames(
        frames in proptest::collection::vec(frame(), 0..20),
        cuts in proptest::collection::vec(any::<u16>(), 0..40),
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut decoder = Decoder::new(600);
        let mut got = Vec::new();
        for chunk in chunks(&bytes, &cuts) {
            decoder.extend(&chunk);
            while let Some(f) = decoder.decode().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert!(decoder.finish().is_ok());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn any_bytes_decode_to_frames_then_at_most_one_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<u16>(), 0..20),
        max in 0u32..1000,
    ) {
        let mut decoder = Decoder::new(max);
        let mut consumed = 0;
        'feed: for chunk in chunks(&bytes, &cuts) {
            decoder.extend(&chunk);
            loop {
                match decoder.decode() {
                    Ok(Some(f)) => {
                        prop_assert!(f.payload.len() <= max as usize);
                        consumed += HEADER_LEN + f.payload.len();
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        prop_assert!(consumed <= bytes.len());
    }
}
