//! A framed handler: each DATA request is answered with its payload in ASCII upper case.
//!
//! ```sh
//! cargo run --release --example uppercase -- --listen 127.0.0.1:7000
//! forkc --connect 127.0.0.1:7000 send hello      # HELLO
//! ```
//!
//! `--listen` takes forkd's address forms (`127.0.0.1:7000`, `[::1]:7000`, `:7000`,
//! `unix:/path`) and may be repeated; without it, 127.0.0.1:7000. Serves until SIGTERM or
//! SIGINT.

#[path = "support/listen.rs"]
mod listen;

use forkd::{Connection, FramedHandler, Reply, Server};

struct Uppercase;

impl FramedHandler for Uppercase {
    fn request(&mut self, payload: &[u8], reply: Reply<'_>) {
        reply.data_with(|out| out.extend(payload.iter().map(u8::to_ascii_uppercase)));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = Server::new();
    for addr in listen::addresses()? {
        server = server.listen(addr);
    }
    server.framed(|_: &Connection| Uppercase).serve()?;
    Ok(())
}
