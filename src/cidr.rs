//! IP networks for admission rules and per-source grouping.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// An IP network: an address and a prefix length. IPv4 addresses mapped into IPv6
/// (`::ffff:a.b.c.d`) are IPv4 here, in networks as in peers: `::ffff:10.0.0.0/104` is
/// `10.0.0.0/8`. An IPv6 network matches IPv6 peers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address counts as its IPv4
    /// address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }

    /// The network of the leading `v4` or `v6` bits of `ip` (IPv4-mapped addresses as IPv4).
    /// Prefix lengths beyond an address's width are taken as the whole address.
    pub(crate) fn source(ip: IpAddr, v4: u8, v6: u8) -> Cidr {
        let net = match canonical(ip) {
            IpAddr::V4(ip) => IpNet::V4(Ipv4Net::new_assert(ip, v4.min(32)).trunc()),
            IpAddr::V6(ip) => IpNet::V6(Ipv6Net::new_assert(ip, v6.min(128)).trunc()),
        };
        Cidr(net)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). Host bits are
    /// cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) if !s.contains('/') => s
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| format!("'{s}' is not an address or network (10.0.0.0/8, ::1/128)"))?,
            Err(_) => {
                let (addr, _) = s.split_once('/').unwrap_or((s, ""));
                return Err(match addr.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => format!("'{s}': prefix must be 0 to 32"),
                    Ok(IpAddr::V6(_)) => format!("'{s}': prefix must be 0 to 128"),
                    Err(_) => {
                        format!("'{s}' is not an address or network (10.0.0.0/8, ::1/128)")
                    }
                });
            }
        };
        Ok(Cidr(canonical_net(net.trunc())))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IPv4 address that arrives mapped into IPv6 (`::ffff:a.b.c.d`, from a dual-stack socket)
/// is matched as the IPv4 address it is.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A network inside `::ffff:0:0/96` is the IPv4 network it maps.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new_assert(v4, v6.prefix_len() - 96)),
            None => net,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching_v4_v6_and_mapped() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("10.1.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert_eq!(
            "127.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "127.0.0.1/32"
        );
        for bad in ["10.0.0.0/33", "::/129", "host/8", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv4_mapped_networks_are_ipv4_networks() {
        let all: Cidr = "::ffff:0.0.0.0/96".parse().unwrap();
        assert_eq!(all.to_string(), "0.0.0.0/0");
        assert!(all.contains("127.0.0.1".parse().unwrap()));
        assert!(all.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let loopback: Cidr = "::ffff:127.0.0.0/104".parse().unwrap();
        assert_eq!(loopback.to_string(), "127.0.0.0/8");
        assert!(loopback.contains("127.9.9.9".parse().unwrap()));
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        // Prefixes longer than the address (from --per-source-prefix) never overflow.
        let ip = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(Cidr::source(ip, 24, 64).to_string(), "10.1.2.0/24");
        assert_eq!(Cidr::source(ip, 0, 0).to_string(), "0.0.0.0/0");
    }
}
