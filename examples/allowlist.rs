//! An embedder's reload: the uppercase service for the clients a file lists, one address or
//! network per line; everyone else is refused (ERROR 5) before any fork. SIGHUP reads the
//! file again and the new list applies to the next connections.
//!
//! ```sh
//! echo 127.0.0.1 > /tmp/allowed
//! cargo run --release --example allowlist -- /tmp/allowed 127.0.0.1:7000 &
//! forkc --connect 127.0.0.1:7000 send hello      # HELLO
//! echo 10.0.0.0/8 > /tmp/allowed; kill -HUP %1   # now 127.0.0.1 is refused
//! ```

use forkd::config::{Cidr, Config, LogOptions, LogTarget, Rule};
use forkd::{Connection, FramedHandler, Reply, Server};

struct Uppercase;

impl FramedHandler for Uppercase {
    fn request(&mut self, payload: &[u8], reply: Reply<'_>) {
        reply.data_with(|out| out.extend(payload.iter().map(u8::to_ascii_uppercase)));
    }
}

/// The configuration for the list in `path`: each entry allowed, then everyone denied.
fn config(path: &str, listen: forkd::Addr) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut config = Config::default();
    config.listen.push(listen);
    config.log = LogOptions {
        target: LogTarget::Stderr,
        ..LogOptions::default()
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let net: Cidr = line.parse().map_err(|e| format!("{path}: {e}"))?;
        config.admission.rules.push(Rule { allow: true, net });
    }
    for everyone in ["0.0.0.0/0", "::/0"] {
        let net = everyone.parse()?;
        config.admission.rules.push(Rule { allow: false, net });
    }
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(listen)) = (args.next(), args.next()) else {
        return Err("usage: allowlist FILE ADDR".into());
    };
    let listen: forkd::Addr = listen.parse()?;
    let first = config(&path, listen.clone())?;
    Server::from_config(first, forkd::Service::Echo)
        .on_reload(move || config(&path, listen.clone()))
        .framed(|_: &Connection| Uppercase)
        .serve()?;
    Ok(())
}
