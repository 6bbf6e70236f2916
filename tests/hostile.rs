//! 1500 hostile connections: random bytes, half frames, and whole frames followed by an
//! abortive close (RST). Afterwards the supervisor has no zombie, the descriptors it started
//! with, and still answers.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{Client, Forkd};
use forkd::addr::Addr;
use forkd::frame::{Frame, Kind};

/// xorshift64*: reproducible noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn tcp(addr: &Addr) -> TcpStream {
    let Addr::Ip(sa) = addr else { unreachable!() };
    let s = TcpStream::connect(sa).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn attack(addr: &Addr, seed: u64, count: usize) {
    let mut noise = Noise(seed);
    for i in 0..count {
        let mut s = tcp(addr);
        match i % 3 {
            0 => {
                let n = (noise.next() % 2048) as usize;
                let _ = s.write_all(&noise.bytes(n));
            }
            1 => {
                let frame = Frame::new(Kind::Data, noise.bytes(64)).encode();
                let cut = 1 + (noise.next() as usize % (frame.len() - 1));
                let _ = s.write_all(&frame[..cut]);
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            _ => {
                let _ = s.write_all(&Frame::new(Kind::Data, noise.bytes(300)).encode());
                forkd::client::reset(s);
                continue;
            }
        }
        if noise.next().is_multiple_of(2) {
            forkd::client::reset(s);
        }
    }
}

#[test]
fn fifteen_hundred_hostile_connections_leave_nothing_behind() {
    let server = Forkd::start(&["--max-children", "64", "--idle-timeout", "5"]);
    let addr = server.addr();
    let fds_before = server.fd_count();
    let attackers: Vec<_> = (0..6u64)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || attack(&addr, 0x9e37_79b9_7f4a_7c15 ^ (t + 1), 250))
        })
        .collect();
    for a in attackers {
        a.join().unwrap();
    }
    // A connection reset while its handshake's last ACK waited for room in the kernel's
    // queue is never accepted; every one that was accepted must end. Settled: as many ends
    // as accepts, no child, and nothing new for half a second.
    let count = |what: &str| server.log().iter().filter(|l| l.contains(what)).count();
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut last = (usize::MAX, usize::MAX);
    let accepted = loop {
        let now = (count(" accept peer="), count(" end peer="));
        if now == last && now.0 == now.1 && server.children().is_empty() {
            break now.0;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "accepted and ended: {now:?}; children {:?}; lines lost: {:?}",
            server.children(),
            server
                .log()
                .iter()
                .filter(|l| l.contains("log_dropped="))
                .collect::<Vec<_>>()
        );
        last = now;
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(accepted >= 1000, "only {accepted} of 1500 accepted");
    assert_eq!(server.fd_count(), fds_before, "supervisor descriptors");
    let log = server.log();
    assert!(
        !log.iter().any(|l| l.contains("signal:")),
        "a child died of a signal: {:?}",
        log.iter().find(|l| l.contains("signal:"))
    );
    let mut client = Client::connect(&addr);
    assert_eq!(client.echo(b"still answering").payload, b"still answering");
}

#[test]
fn with_defer_accept_a_silent_client_costs_no_fork() {
    let mut server = Forkd::start(&["--defer-accept", "30"]);
    let mut silent = Client::connect(&server.addr());
    let mut speaking = Client::connect(&server.addr());
    assert_eq!(speaking.echo(b"first").payload, b"first");
    // The speaking client was handed over; the silent one still waits in the kernel.
    server.wait_log_count(" accept peer=", 1);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(server.children().len(), 1, "{:?}", server.log());
    assert_eq!(
        server
            .log()
            .iter()
            .filter(|l| l.contains(" accept peer="))
            .count(),
        1
    );
    // Once it speaks, it is served as any other.
    assert_eq!(silent.echo(b"late").payload, b"late");
    server.wait_log_count(" accept peer=", 2);
}
