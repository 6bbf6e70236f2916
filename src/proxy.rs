//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a load
//! balancer sends before the client's bytes: who the client is, as the balancer saw it.
//!
//! This module only reads a header from the bytes a connection has sent so far; it never asks
//! for a byte past the header's end, so that what follows reaches the handler untouched. The
//! caller peeks at the socket, calls [`parse`], and consumes exactly [`Parsed::Done`]'s
//! `length` bytes. The two versions are told apart by their signatures ("PROXY " and the
//! 12-byte binary one); anything else is not a header.
//!
//! Limits: a version 1 header is at most 107 bytes (the specification's); a version 2 header
//! at most [`MAX_V2`] bytes, TLVs included (they are skipped, not read). A version 2 header
//! for Unix sockets, or `UNKNOWN`/`AF_UNSPEC`, or a `LOCAL` command (a balancer's health
//! check) declares no client address: the connection is then the proxy's own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 header, "\r\n" included.
const MAX_V1: usize = 107;
/// The longest version 2 header accepted: the 16 fixed bytes, addresses and TLVs. HAProxy's
/// own headers with SSL and unique-id TLVs fit well within it.
pub(crate) const MAX_V2: usize = 4096;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_SIGNATURE: &[u8; 6] = b"PROXY ";

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// The client's address and the address it connected to (the balancer's front).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No client address: `LOCAL` (the balancer's own connection, a health check),
    /// `UNKNOWN`, `AF_UNSPEC` or a Unix-socket pair. The connection is the proxy's.
    Unproxied,
}

/// The outcome of reading the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not enough yet: the header is at least this many bytes long.
    Need(usize),
    /// A header of `length` bytes.
    Done { length: usize, header: Header },
    /// Not a valid header; why, for the log.
    Invalid(String),
}

/// Reads a header from the start of `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    if bytes.starts_with(V2_SIGNATURE) {
        return parse_v2(bytes);
    }
    if bytes.starts_with(V1_SIGNATURE) {
        return parse_v1(bytes);
    }
    // A prefix of either signature may still become one.
    let n = bytes.len();
    if n < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(bytes) {
        return Parsed::Need(16);
    }
    if n < V1_SIGNATURE.len() && V1_SIGNATURE.starts_with(bytes) {
        return Parsed::Need(V1_SIGNATURE.len() + 1);
    }
    Parsed::Invalid("no PROXY protocol signature".into())
}

fn invalid(why: impl Into<String>) -> Parsed {
    Parsed::Invalid(why.into())
}

/// Version 1: `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\r\n`.
fn parse_v1(bytes: &[u8]) -> Parsed {
    let window = &bytes[..bytes.len().min(MAX_V1)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.len() >= MAX_V1 {
            return invalid("version 1 header without \\r\\n in 107 bytes");
        }
        return Parsed::Need(window.len() + 1);
    };
    let length = end + 2;
    let Some(line) = std::str::from_utf8(&bytes[V1_SIGNATURE.len()..end])
        .ok()
        .filter(|line| line.is_ascii())
    else {
        return invalid("version 1 header is not ASCII");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let family = fields[0];
    if family == "UNKNOWN" {
        // The specification: whatever follows UNKNOWN up to \r\n is ignored.
        return Parsed::Done {
            length,
            header: Header::Unproxied,
        };
    }
    if fields.len() != 5 {
        return invalid(format!(
            "version 1 header has {} fields, not 5",
            fields.len()
        ));
    }
    let address = |text: &str| -> Option<IpAddr> {
        match family {
            "TCP4" => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            // Not an IPv4 address in IPv6 form: the specification's TCP6 takes IPv6 text.
            "TCP6" => text.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            _ => None,
        }
    };
    if family != "TCP4" && family != "TCP6" {
        return invalid(format!(
            "version 1 header's protocol {family:?} is not TCP4, TCP6 or UNKNOWN"
        ));
    }
    let (Some(source), Some(destination)) = (address(fields[1]), address(fields[2])) else {
        return invalid(format!("version 1 header's addresses are not {family}"));
    };
    let (Some(source_port), Some(destination_port)) = (port(fields[3]), port(fields[4])) else {
        return invalid("version 1 header's ports are not 0 to 65535");
    };
    Parsed::Done {
        length,
        header: Header::Proxied {
            source: SocketAddr::new(source, source_port),
            destination: SocketAddr::new(destination, destination_port),
        },
    }
}

/// A port in decimal, digits only, no leading zero (but "0").
fn port(text: &str) -> Option<u16> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// Version 2: the signature, version and command, family and transport, the length of the
/// rest (network order), the addresses, TLVs.
fn parse_v2(bytes: &[u8]) -> Parsed {
    if bytes.len() < 16 {
        return Parsed::Need(16);
    }
    let version = bytes[12] >> 4;
    let command = bytes[12] & 0x0f;
    let family_and_transport = bytes[13];
    let length = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if version != 2 {
        return invalid(format!("version 2 signature with version {version}"));
    }
    if length > MAX_V2 {
        return invalid(format!("version 2 header of {length} bytes, over {MAX_V2}"));
    }
    if bytes.len() < length {
        return Parsed::Need(length);
    }
    let body = &bytes[16..length];
    let header = match command {
        // LOCAL: the proxy's own connection; the address block, if any, is ignored.
        0 => Header::Unproxied,
        // The specification's seven pairs; any other "must be rejected as invalid".
        1 => {
            match family_and_transport {
                // UNSPEC, and a Unix-socket stream: no client address.
                0x00 | 0x31 => Header::Unproxied,
                0x12 | 0x22 | 0x32 => return invalid("version 2 header is for datagrams"),
                0x11 => {
                    if body.len() < 12 {
                        return invalid("version 2 IPv4 address block is short");
                    }
                    let ip = |at: usize| {
                        IpAddr::V4(Ipv4Addr::new(
                            body[at],
                            body[at + 1],
                            body[at + 2],
                            body[at + 3],
                        ))
                    };
                    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
                    Header::Proxied {
                        source: SocketAddr::new(ip(0), port(8)),
                        destination: SocketAddr::new(ip(4), port(10)),
                    }
                }
                0x21 => {
                    if body.len() < 36 {
                        return invalid("version 2 IPv6 address block is short");
                    }
                    let ip = |at: usize| {
                        let octets: [u8; 16] = body[at..at + 16].try_into().expect("16 bytes");
                        IpAddr::V6(Ipv6Addr::from(octets))
                    };
                    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
                    Header::Proxied {
                        source: SocketAddr::new(ip(0), port(32)),
                        destination: SocketAddr::new(ip(16), port(34)),
                    }
                }
                other => {
                    return invalid(format!(
                        "version 2 header's family and transport 0x{other:02x} are unknown"
                    ));
                }
            }
        }
        other => return invalid(format!("version 2 header's command {other} is unknown")),
    };
    Parsed::Done { length, header }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn proxied(source: &str, destination: &str) -> Header {
        Header::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn version_1_gives_the_client_and_leaves_the_payload() {
        let bytes = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nPAYLOAD";
        assert_eq!(
            parse(bytes),
            Parsed::Done {
                length: bytes.len() - 7,
                header: proxied("192.0.2.7:56324", "198.51.100.1:443"),
            }
        );
        let six = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
        assert_eq!(
            parse(six),
            Parsed::Done {
                length: six.len(),
                header: proxied("[2001:db8::1]:65535", "[::1]:0"),
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN whatever follows\r\nX"),
            Parsed::Done {
                length: 32,
                header: Header::Unproxied
            }
        );
    }

    #[test]
    fn version_1_refuses_what_is_not_ascii() {
        let line = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 44\u{b3}\r\n";
        assert_eq!(
            parse(line.as_bytes()),
            Parsed::Invalid("version 1 header is not ASCII".into())
        );
    }

    #[test]
    fn version_1_refuses_what_the_specification_does_not_allow() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 192.0.2.8 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 1\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 1\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 1\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 1 1\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 1\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&endless), Parsed::Invalid(_)));
    }

    #[test]
    fn version_2_gives_the_client_and_skips_tlvs() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb];
        body.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // a NOOP TLV
        let mut bytes = v2(1, 0x11, &body);
        let length = bytes.len();
        bytes.extend_from_slice(b"PAYLOAD");
        assert_eq!(
            parse(&bytes),
            Parsed::Done {
                length,
                header: proxied("192.0.2.7:56324", "198.51.100.1:443"),
            }
        );
        let mut six = vec![0u8; 36];
        six[15] = 1;
        six[31] = 1;
        six[32..34].copy_from_slice(&4000u16.to_be_bytes());
        six[34..36].copy_from_slice(&7000u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &six)),
            Parsed::Done {
                length: 52,
                header: proxied("[::1]:4000", "[::1]:7000"),
            }
        );
    }

    #[test]
    fn version_2_local_unspec_and_unix_keep_the_proxy() {
        for (command, family, body) in [
            (0, 0x11, vec![0u8; 12]), // LOCAL, with an address block to ignore
            (0, 0x00, vec![]),
            (1, 0x00, vec![]),
            (1, 0x31, vec![0u8; 216]),
        ] {
            let bytes = v2(command, family, &body);
            assert_eq!(
                parse(&bytes),
                Parsed::Done {
                    length: bytes.len(),
                    header: Header::Unproxied
                }
            );
        }
    }

    #[test]
    fn version_2_refuses_bad_versions_commands_families_and_lengths() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        for bad in [
            wrong_version,
            v2(2, 0x11, &[0; 12]),
            v2(1, 0x41, &[0; 12]),
            v2(1, 0x12, &[0; 12]),
            // AF_INET or AF_INET6 with an unspecified transport, a transport with no family.
            v2(1, 0x10, &[0; 12]),
            v2(1, 0x20, &[0; 36]),
            v2(1, 0x01, &[]),
            v2(1, 0x11, &[0; 11]),
            v2(1, 0x21, &[0; 35]),
        ] {
            assert!(matches!(parse(&bad), Parsed::Invalid(_)), "{bad:?}");
        }
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
    }

    #[test]
    fn a_header_cut_short_asks_for_more_and_no_further() {
        let mut v2_tlv = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 4, 0, 1, 0]);
        v2_tlv.extend_from_slice(b"X");
        for whole in [
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nX".to_vec(),
            v2_tlv,
        ] {
            let Parsed::Done { length, .. } = parse(&whole) else {
                panic!("whole header")
            };
            for cut in 0..length {
                match parse(&whole[..cut]) {
                    Parsed::Need(n) => assert!(n > cut && n <= length, "{cut}: {n}"),
                    other => panic!("{cut}: {other:?}"),
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_give_an_answer_within_them(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match parse(&bytes) {
                Parsed::Done { length, .. } => prop_assert!(length <= bytes.len()),
                Parsed::Need(n) => prop_assert!(n > bytes.len() && n <= MAX_V2),
                Parsed::Invalid(_) => {}
            }
        }

        #[test]
        fn any_version_2_prefix_gives_an_answer(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = [V2_SIGNATURE.as_slice(), &tail].concat();
            match parse(&bytes) {
                Parsed::Done { length, .. } => prop_assert!(length <= bytes.len()),
                Parsed::Need(n) => prop_assert!(n > bytes.len() && n <= MAX_V2),
                Parsed::Invalid(_) => {}
            }
        }
    }
}
