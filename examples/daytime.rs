//! A stream handler: the daytime service of RFC 867, inetd's classic internal service. Each
//! connection gets the current local date and time as one line ending in CRLF, then the
//! server closes it.
//!
//! ```sh
//! cargo run --release --example daytime -- --listen 127.0.0.1:7013
//! nc 127.0.0.1 7013      # Wed Nov 25 17:42:07 2026
//! ```

#[path = "support/listen.rs"]
mod listen;

use std::io::Write;

use forkd::{Connection, Server};

fn daytime(conn: &mut Connection) -> std::io::Result<()> {
    conn.write_all(format!("{}\r\n", now()).as_bytes())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = Server::new();
    for addr in listen::addresses()? {
        server = server.listen(addr);
    }
    server.stream(daytime).serve()?;
    Ok(())
}

/// The local time as ctime(3) writes it, without its newline: `Wed Nov 25 17:42:07 2026`.
fn now() -> String {
    let mut buf = [0u8; 64];
    // SAFETY: time and localtime_r write only into the values given; strftime writes at most
    // buf.len() bytes and returns how many.
    let written = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%a %b %e %H:%M:%S %Y".as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..written]).into_owned()
}
