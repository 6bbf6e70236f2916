//! The command line of the small examples: `--listen ADDR`, repeatable, in forkd's address
//! forms; 127.0.0.1:7000 when none is given.

use forkd::Addr;

/// The `--listen ADDR` arguments, or 127.0.0.1:7000.
pub fn addresses() -> Result<Vec<Addr>, String> {
    let mut args = std::env::args().skip(1);
    let mut addrs = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs an address")?;
                addrs.push(value.parse().map_err(|e| format!("--listen: {e}"))?);
            }
            other => {
                return Err(format!(
                    "unexpected argument '{other}' (only --listen ADDR)"
                ));
            }
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:7000".parse()?);
    }
    Ok(addrs)
}
