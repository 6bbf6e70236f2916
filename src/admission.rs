//! Admission: whether the supervisor starts a worker for a new connection at all.
//!
//! Decided before any fork, in this order: access rules (`--allow` / `--deny`, first match
//! wins, default allow), penalties earned by earlier conversations (`--penalty`,
//! [`crate::penalty`]), concurrent children per source (`--per-source`), and connections per
//! source over time (`--rate`, a token bucket). A source is the client address cut to
//! `--per-source-prefix` bits (default 32 for IPv4, 128 for IPv6), as sshd's
//! PerSourceNetBlockSize groups neighbours. Unix-socket peers have no address: rules and
//! per-source limits do not apply to them. The settings are [`crate::config::Policy`]; this
//! module keeps the state they need.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cidr::{Cidr, canonical};
use crate::config::{Policy, Rate, SourcePrefix};
use crate::conn::Peer;
use crate::frame::ErrorCode;
use crate::penalty::{Offence, Penalties};

/// The source a peer belongs to; `None` for Unix-socket peers.
pub(crate) fn source_of(prefix: &SourcePrefix, peer: &Peer) -> Option<Cidr> {
    let Peer::Tcp(sa) = peer else { return None };
    Some(Cidr::source(sa.ip(), prefix.v4, prefix.v6))
}

/// Why a connection gets no child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    /// For the log, one word: `denied`, `penalty`, `per-source`, `rate`, `rate-table`,
    /// `overload`, `early-drop`, `fork`, `shutdown`.
    pub reason: &'static str,
    /// For the peer, in the ERROR frame.
    pub message: String,
}

/// Rate buckets kept at most. A full table is swept of idle buckets (at most once a second,
/// so a spray of new addresses cannot make every accept a full scan); if it is still full,
/// new sources are refused until buckets go idle: a scan from many addresses can neither grow
/// the supervisor without bound nor slip past the rate limit.
const MAX_BUCKETS: usize = 16_384;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// What asking a source's bucket for a token gave.
enum Token {
    Taken,
    Empty,
    /// No bucket for a new source: the table is full of sources seen within a period.
    TableFull,
}

/// The admission state: children per source and rate buckets.
pub(crate) struct Admission {
    policy: Policy,
    children_per_source: HashMap<Cidr, u32>,
    buckets: HashMap<Cidr, Bucket>,
    last_sweep: Option<Instant>,
    /// Whether children per source are counted: for --per-source, or when asked.
    counting: bool,
    /// Sources serving a `--penalty`.
    penalties: Option<Penalties>,
}

impl Admission {
    /// `count_sources`: keep children per source even without --per-source (TCPCONNNUM).
    pub fn new(policy: Policy, count_sources: bool) -> Admission {
        Admission {
            counting: count_sources || policy.per_source.is_some(),
            penalties: policy.penalty.clone().map(Penalties::new),
            policy,
            children_per_source: HashMap::new(),
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    /// A reload: `policy` from now on. Children per source are counted afresh from `peers`,
    /// those being served (what makes a source may have changed); rate buckets are kept
    /// unless it did, and penalties being served run to their end unless `--penalty` is gone.
    pub fn reconfigure<'a>(
        &mut self,
        policy: Policy,
        count_sources: bool,
        peers: impl Iterator<Item = &'a Peer>,
    ) {
        if policy.source_prefix != self.policy.source_prefix {
            self.buckets.clear();
        }
        self.penalties = match (self.penalties.take(), policy.penalty.clone()) {
            (Some(mut kept), Some(settings)) => {
                kept.set(settings);
                Some(kept)
            }
            (None, Some(settings)) => Some(Penalties::new(settings)),
            (_, None) => None,
        };
        self.counting = count_sources || policy.per_source.is_some();
        self.policy = policy;
        self.children_per_source.clear();
        for peer in peers {
            self.started(peer);
        }
    }

    /// The penalties being served (an upgrade in place hands them over).
    pub fn sentences(&self, now: Instant) -> Vec<(Cidr, Offence, Duration)> {
        self.penalties
            .as_ref()
            .map_or_else(Vec::new, |p| p.sentences(now))
    }

    /// The rate buckets: each source, its tokens and how long since they were counted (an
    /// upgrade in place hands them over).
    pub fn buckets(&self, now: Instant) -> Vec<(Cidr, f64, Duration)> {
        self.buckets
            .iter()
            .map(|(source, b)| (*source, b.tokens, now.saturating_duration_since(b.updated)))
            .collect()
    }

    /// Rate buckets the previous image handed over (at most the table's size).
    pub fn restore_buckets(&mut self, buckets: &[(Cidr, f64, Duration)], now: Instant) {
        for (source, tokens, age) in buckets.iter().take(MAX_BUCKETS) {
            let updated = now.checked_sub(*age).unwrap_or(now);
            let tokens = tokens.max(0.0);
            self.buckets.insert(*source, Bucket { tokens, updated });
        }
    }

    /// Penalties the previous image handed over, if this one penalises at all.
    pub fn restore_sentences(&mut self, sentences: &[(Cidr, Offence, Duration)], now: Instant) {
        if let Some(penalties) = &mut self.penalties {
            penalties.restore(sentences, now);
        }
    }

    /// Whether `peer` may have a child now. An admitted connection spends a rate token; call
    /// [`Admission::started`] once its child runs.
    pub fn check(&mut self, peer: &Peer, now: Instant) -> Result<(), Refusal> {
        let Peer::Tcp(sa) = peer else { return Ok(()) };
        let ip = sa.ip();
        if let Some(rule) = self.policy.rules.iter().find(|r| r.net.contains(ip))
            && !rule.allow
        {
            return Err(Refusal {
                code: ErrorCode::Denied,
                reason: "denied",
                message: format!("address {} denied by rule {}", canonical(ip), rule.net),
            });
        }
        let source = source_of(&self.policy.source_prefix, peer).expect("TCP peer");
        if let Some((offence, left)) = self
            .penalties
            .as_mut()
            .and_then(|p| p.serving(&source, now))
        {
            return Err(Refusal {
                code: ErrorCode::Denied,
                reason: "penalty",
                message: format!(
                    "{source} penalised ({offence}): {}s left",
                    left.as_secs_f64().ceil()
                ),
            });
        }
        if let Some(limit) = self.policy.per_source {
            let now_from_source = self.connections_from(&source);
            if now_from_source >= limit {
                return Err(Refusal {
                    code: ErrorCode::Busy,
                    reason: "per-source",
                    message: format!("{limit} connections from {source} already"),
                });
            }
        }
        if let Some(rate) = self.policy.rate {
            match self.take_token(source, rate, now) {
                Token::Taken => {}
                Token::Empty => {
                    return Err(Refusal {
                        code: ErrorCode::RateLimited,
                        reason: "rate",
                        message: format!(
                            "more than {} connections in {}s from {source}",
                            rate.count,
                            rate.per.as_secs_f64()
                        ),
                    });
                }
                Token::TableFull => {
                    return Err(Refusal {
                        code: ErrorCode::RateLimited,
                        reason: "rate-table",
                        message: format!(
                            "too many sources connecting at once ({MAX_BUCKETS} being \
                             rate-limited); try again later"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Gives back the rate token `check` took for `peer`, whose connection was then refused
    /// for another reason (the server at its limit, a failed fork): only connections that
    /// get a worker count against a client's rate.
    pub fn refund(&mut self, peer: &Peer) {
        let (Some(rate), Some(source)) = (self.policy.rate, self.source_of(peer)) else {
            return;
        };
        if let Some(bucket) = self.buckets.get_mut(&source) {
            bucket.tokens = (bucket.tokens + 1.0).min(f64::from(rate.count));
        }
    }

    /// Connections from `source` with a child now (TCPCONNNUM, per-source limit).
    pub fn connections_from(&self, source: &Cidr) -> u32 {
        self.children_per_source.get(source).copied().unwrap_or(0)
    }

    pub fn source_of(&self, peer: &Peer) -> Option<Cidr> {
        source_of(&self.policy.source_prefix, peer)
    }

    pub fn started(&mut self, peer: &Peer) {
        if !self.counting {
            return;
        }
        if let Some(source) = self.source_of(peer) {
            *self.children_per_source.entry(source).or_insert(0) += 1;
        }
    }

    /// Penalises `peer`'s source for `offence` (`--penalty`); if it was, the fields of the
    /// line to log after `peer=`.
    pub fn penalise(&mut self, peer: &Peer, offence: Offence, now: Instant) -> Option<String> {
        let Peer::Tcp(sa) = peer else { return None };
        let source = self.source_of(peer)?;
        let left = self
            .penalties
            .as_mut()?
            .penalise(sa.ip(), source, offence, now)?;
        Some(format!(
            "source={source} penalty={offence} left={:.0}s",
            left.as_secs_f64().ceil()
        ))
    }

    pub fn ended(&mut self, peer: &Peer) {
        if !self.counting {
            return;
        }
        let Some(source) = self.source_of(peer) else {
            return;
        };
        if let Some(n) = self.children_per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.children_per_source.remove(&source);
            }
        }
    }

    fn take_token(&mut self, source: Cidr, rate: Rate, now: Instant) -> Token {
        let capacity = f64::from(rate.count);
        let per_sec = capacity / rate.per.as_secs_f64();
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&source) {
            let due = self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
            if due {
                self.last_sweep = Some(now);
                // A bucket idle for a whole period is full again: forgetting it loses nothing.
                let full_after = rate.per;
                self.buckets
                    .retain(|_, b| now.saturating_duration_since(b.updated) < full_after);
            }
            if self.buckets.len() >= MAX_BUCKETS {
                return Token::TableFull;
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Token::Taken
        } else {
            Token::Empty
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;
    use std::net::SocketAddr;

    fn peer(s: &str) -> Peer {
        Peer::Tcp(s.parse::<SocketAddr>().unwrap())
    }

    fn rule(allow: bool, net: &str) -> Rule {
        Rule {
            allow,
            net: net.parse().unwrap(),
        }
    }

    #[test]
    fn first_matching_rule_wins_and_default_is_allow() {
        let mut a = Admission::new(
            Policy {
                rules: vec![rule(true, "10.0.0.5"), rule(false, "10.0.0.0/8")],
                ..Policy::default()
            },
            false,
        );
        let now = Instant::now();
        assert!(a.check(&peer("10.0.0.5:1"), now).is_ok());
        let refusal = a.check(&peer("10.9.9.9:1"), now).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Denied);
        assert!(a.check(&peer("192.0.2.1:1"), now).is_ok());
        assert!(
            a.check(
                &Peer::Unix {
                    pid: None,
                    uid: None,
                    gid: None
                },
                now
            )
            .is_ok()
        );
    }

    #[test]
    fn per_source_counts_neighbours_by_prefix() {
        let mut a = Admission::new(
            Policy {
                per_source: Some(2),
                source_prefix: "24:64".parse().unwrap(),
                ..Policy::default()
            },
            false,
        );
        let now = Instant::now();
        for p in ["10.0.0.1:1", "10.0.0.2:1"] {
            assert!(a.check(&peer(p), now).is_ok());
            a.started(&peer(p));
        }
        assert_eq!(
            a.check(&peer("10.0.0.3:1"), now).unwrap_err().code,
            ErrorCode::Busy
        );
        assert!(a.check(&peer("10.0.1.1:1"), now).is_ok());
        a.ended(&peer("10.0.0.1:9"));
        assert!(a.check(&peer("10.0.0.3:1"), now).is_ok());
    }

    #[test]
    fn rate_is_a_token_bucket() {
        let mut a = Admission::new(
            Policy {
                rate: Some("3/1".parse().unwrap()),
                ..Policy::default()
            },
            false,
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(a.check(&peer("192.0.2.1:1"), t0).is_ok());
        }
        let refused = a.check(&peer("192.0.2.1:1"), t0).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert!(a.check(&peer("192.0.2.2:1"), t0).is_ok(), "another source");
        // A third of a second buys one token back.
        let later = t0 + Duration::from_millis(340);
        assert!(a.check(&peer("192.0.2.1:1"), later).is_ok());
        assert!(a.check(&peer("192.0.2.1:1"), later).is_err());
        // A connection refused after admission gets its token back.
        a.refund(&peer("192.0.2.1:1"));
        assert!(a.check(&peer("192.0.2.1:1"), later).is_ok());
    }

    #[test]
    fn a_full_bucket_table_refuses_new_sources_until_buckets_go_idle() {
        let mut a = Admission::new(
            Policy {
                rate: Some("1/1".parse().unwrap()),
                ..Policy::default()
            },
            false,
        );
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS as u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            assert!(a.check(&Peer::Tcp(SocketAddr::from((ip, 1))), t0).is_ok());
        }
        let full = a.check(&peer("192.0.2.1:1"), t0).unwrap_err();
        assert_eq!(full.reason, "rate-table", "{full:?}");
        assert!(
            !full.message.contains("more than 1 connections"),
            "{full:?}"
        );
        assert_eq!(a.buckets.len(), MAX_BUCKETS);
        let later = t0 + Duration::from_secs(2);
        assert!(
            a.check(&peer("192.0.2.1:1"), later).is_ok(),
            "idle buckets swept"
        );
        assert_eq!(a.buckets.len(), 1);
    }

    #[test]
    fn parses_rates_and_prefixes() {
        assert_eq!(
            "20/1".parse::<Rate>().unwrap(),
            Rate {
                count: 20,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(
            "5/0.5".parse::<Rate>().unwrap().per,
            Duration::from_millis(500)
        );
        for bad in ["20", "0/1", "20/0", "x/1", "20/y"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(
            "24:56".parse::<SourcePrefix>().unwrap(),
            SourcePrefix { v4: 24, v6: 56 }
        );
        for bad in ["33:128", "32:129", "32", "a:b"] {
            assert!(bad.parse::<SourcePrefix>().is_err(), "{bad}");
        }
    }
}
