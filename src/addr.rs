//! The address forms shared by `forkd --listen` and `forkc --connect`.
//!
//! `127.0.0.1:7000`, `[::1]:7000`, `:7000` (every address, IPv4 and IPv6) and
//! `unix:/path/to.sock`. Addresses are numeric on purpose: a daemon that resolves names at
//! start binds to whatever DNS said that day.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// One `--listen` or `--connect` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// One IP address and port.
    Ip(SocketAddr),
    /// `:PORT`: every local address, IPv4 and IPv6.
    AnyIp(u16),
    /// `unix:PATH`: a Unix stream socket.
    Unix(PathBuf),
}

impl Addr {
    /// Where a client connects for this address: `:PORT` means this machine, over IPv4
    /// loopback.
    pub fn connect_target(&self) -> Addr {
        match self {
            Addr::AnyIp(port) => Addr::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port)),
            other => other.clone(),
        }
    }
}

impl FromStr for Addr {
    type Err = String;

    fn from_str(s: &str) -> Result<Addr, String> {
        const FORMS: &str = "expected 127.0.0.1:7000, [::1]:7000, :7000 or unix:/path/to.sock";
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("'{s}': unix: needs a path ({FORMS})"));
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        // An IPv6 address with its port and no brackets (::1:7000): the port cannot be told
        // from the address, so say how to write it.
        if let Some((host, port)) = s.rsplit_once(':')
            && host.contains(':')
            && !s.starts_with('[')
            && host.parse::<std::net::Ipv6Addr>().is_ok()
            && port.parse::<u16>().is_ok()
        {
            return Err(format!(
                "'{s}': an IPv6 address takes its port after brackets: [{host}]:{port}"
            ));
        }
        if let Some(port) = s.strip_prefix(':') {
            return port
                .parse::<u16>()
                .map(Addr::AnyIp)
                .map_err(|_| format!("'{s}': '{port}' is not a port number ({FORMS})"));
        }
        s.parse::<SocketAddr>()
            .map(Addr::Ip)
            .map_err(|_| format!("'{s}' is not an address ({FORMS})"))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(a) => write!(f, "{a}"),
            Addr::AnyIp(port) => write!(f, ":{port}"),
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "127.0.0.1:7000".parse::<Addr>().unwrap(),
            Addr::Ip("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            "[::1]:7000".parse::<Addr>().unwrap(),
            Addr::Ip("[::1]:7000".parse().unwrap())
        );
        assert_eq!(":7000".parse::<Addr>().unwrap(), Addr::AnyIp(7000));
        assert_eq!(
            "unix:/run/x.sock".parse::<Addr>().unwrap(),
            Addr::Unix("/run/x.sock".into())
        );
    }

    #[test]
    fn rejects_bad_forms_with_the_value_in_the_message() {
        for bad in [
            "",
            "7000",
            "localhost:7000",
            ":70000",
            "unix:",
            "1.2.3.4",
            "[::1]",
        ] {
            let err = bad.parse::<Addr>().unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn an_ipv6_address_without_brackets_gets_the_bracket_form() {
        for (bad, hint) in [("::1:7000", "[::1]:7000"), ("fe80::1:80", "[fe80::1]:80")] {
            let err = bad.parse::<Addr>().unwrap_err();
            assert!(err.contains(hint), "{err}");
        }
        // A bare IPv6 address with no port is still just not an address.
        assert!(
            !"::1"
                .parse::<Addr>()
                .unwrap_err()
                .contains("takes its port")
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["127.0.0.1:1", "[::1]:2", ":3", "unix:/a b"] {
            assert_eq!(s.parse::<Addr>().unwrap().to_string(), s);
        }
    }
}
