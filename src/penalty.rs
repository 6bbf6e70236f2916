//! Penalties by how a connection ended (`--penalty`), in the manner of sshd's
//! PerSourcePenalties: a source whose conversations crash their worker, break the protocol or
//! go silent past the idle limit is refused (ERROR 5) for a while, each offence adding its
//! duration, up to `--penalty-max`. Sources are the `--per-source-prefix` networks; those in
//! `--penalty-exempt` are never penalised.
//!
//! The table is bounded: at most [`MAX_PENALISED`] sources. When it is full, expired entries
//! are swept; if it is still full, a new penalty replaces the one that ends soonest, if it
//! ends later itself: the table keeps the sources penalised longest, and a spray of addresses
//! cannot grow the supervisor. The sentences are also kept in order of their end, so that
//! finding the expired ones and the soonest is a step, not a scan of the table, for every
//! penalty an attacker earns once it is full.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::cidr::Cidr;
use crate::config::{check_duration, parse_secs};
use crate::isolation::{EXIT_BROKEN, EXIT_PANIC, EXIT_TIMED_OUT, Ended};

/// Sources penalised at once, at most.
pub(crate) const MAX_PENALISED: usize = 16_384;

/// `--penalty crash=DURATION,error=DURATION,timeout=DURATION`, with `--penalty-max` and
/// `--penalty-exempt`.
#[derive(Clone, Debug, PartialEq)]
pub struct Penalty {
    /// Per worker killed by a signal (or panicked).
    pub crash: Duration,
    /// Per conversation that broke the protocol (ERROR 1, 2 or 3).
    pub error: Duration,
    /// Per conversation ended by `--idle-timeout` or `--max-lifetime`.
    pub timeout: Duration,
    /// The most a source's penalty adds up to.
    pub max: Duration,
    /// Networks never penalised (health checkers, trusted clients).
    pub exempt: Vec<Cidr>,
}

/// What the penalty max is without `--penalty-max`, as sshd's.
pub const DEFAULT_PENALTY_MAX: Duration = Duration::from_secs(600);

impl FromStr for Penalty {
    type Err = String;

    /// `crash=90s,error=5s,timeout=10s`: any of the three, each at most once.
    fn from_str(s: &str) -> Result<Penalty, String> {
        let mut penalty = Penalty {
            crash: Duration::ZERO,
            error: Duration::ZERO,
            timeout: Duration::ZERO,
            max: DEFAULT_PENALTY_MAX,
            exempt: Vec::new(),
        };
        let mut seen = Vec::new();
        for part in s.split(',') {
            let (kind, value) = part.split_once('=').ok_or_else(|| {
                format!("'{part}' is not KIND=DURATION, as in crash=90s,error=5s,timeout=10s")
            })?;
            let slot = match kind.trim() {
                "crash" => &mut penalty.crash,
                "error" => &mut penalty.error,
                "timeout" => &mut penalty.timeout,
                other => {
                    return Err(format!(
                        "'{other}' is not a penalty: crash, error or timeout"
                    ));
                }
            };
            if seen.contains(&kind.trim()) {
                return Err(format!("{} is given twice", kind.trim()));
            }
            seen.push(kind.trim());
            *slot = parse_secs(value).map_err(|why| format!("{kind}: {why}"))?;
        }
        Ok(penalty)
    }
}

impl Penalty {
    /// Whether the durations are in range and some offence costs something.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("crash", self.crash),
            ("error", self.error),
            ("timeout", self.timeout),
            ("--penalty-max", self.max),
        ] {
            check_duration(value).map_err(|why| format!("--penalty {name} {why}"))?;
        }
        if [self.crash, self.error, self.timeout]
            .iter()
            .all(Duration::is_zero)
        {
            return Err("--penalty sets no offence: give crash=, error= or timeout=".into());
        }
        if self.max.is_zero() {
            return Err("--penalty-max 0 would let every penalty lapse at once".into());
        }
        Ok(())
    }

    fn cost(&self, offence: Offence) -> Duration {
        match offence {
            Offence::Crash => self.crash,
            Offence::Error => self.error,
            Offence::Timeout => self.timeout,
        }
    }
}

/// How a conversation ended, when that earns its source a penalty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offence {
    Crash,
    Error,
    Timeout,
}

impl fmt::Display for Offence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Offence::Crash => "crash",
            Offence::Error => "error",
            Offence::Timeout => "timeout",
        })
    }
}

impl Offence {
    /// The offence a word of [`Offence`]'s `Display` names.
    pub(crate) fn named(word: &str) -> Option<Offence> {
        [Offence::Crash, Offence::Error, Offence::Timeout]
            .into_iter()
            .find(|o| o.to_string() == word)
    }

    /// The offence in how a worker ended: `lifetime` when forkd ended it at
    /// `--max-lifetime`; `program` when a program's exit status (its own) is all there is.
    pub(crate) fn of(how: Ended, lifetime: bool, program: bool) -> Option<Offence> {
        if lifetime {
            return Some(Offence::Timeout);
        }
        match how {
            Ended::Signal(..) => Some(Offence::Crash),
            Ended::Exit(_) if program => None,
            Ended::Exit(EXIT_PANIC) => Some(Offence::Crash),
            Ended::Exit(EXIT_BROKEN) => Some(Offence::Error),
            Ended::Exit(EXIT_TIMED_OUT) => Some(Offence::Timeout),
            Ended::Exit(_) => None,
        }
    }
}

/// A source's penalty: until when, and for what it was last penalised.
#[derive(Clone, Copy, Debug)]
struct Sentence {
    until: Instant,
    last: Offence,
}

/// The penalised sources.
pub(crate) struct Penalties {
    settings: Penalty,
    table: HashMap<Cidr, Sentence>,
    /// The same sentences by their end.
    ends: BTreeSet<(Instant, Cidr)>,
}

impl Penalties {
    pub(crate) fn new(settings: Penalty) -> Penalties {
        Penalties {
            settings,
            table: HashMap::new(),
            ends: BTreeSet::new(),
        }
    }

    /// A reload: offences from now on cost what `settings` say; sentences being served run
    /// to their end.
    pub(crate) fn set(&mut self, settings: Penalty) {
        self.settings = settings;
    }

    /// Adds `offence`'s penalty to `source`, the network of `peer`, unless `peer` is exempt
    /// or the offence costs nothing. Returns the time the source now has left.
    pub(crate) fn penalise(
        &mut self,
        peer: IpAddr,
        source: Cidr,
        offence: Offence,
        now: Instant,
    ) -> Option<Duration> {
        let cost = self.settings.cost(offence);
        if cost.is_zero() || self.settings.exempt.iter().any(|net| net.contains(peer)) {
            return None;
        }
        let from = self.table.get(&source).map_or(now, |s| s.until.max(now));
        let until = (from + cost).min(now + self.settings.max);
        if !self.table.contains_key(&source) && !self.make_room(until, now) {
            return None;
        }
        let sentence = Sentence {
            until,
            last: offence,
        };
        if let Some(old) = self.table.insert(source, sentence) {
            self.ends.remove(&(old.until, source));
        }
        self.ends.insert((until, source));
        Some(until - now)
    }

    /// Room for a new entry ending at `until`: expired entries go, then, if still full, the
    /// one ending soonest, when it ends before `until`.
    fn make_room(&mut self, until: Instant, now: Instant) -> bool {
        while self.table.len() >= MAX_PENALISED {
            match self.ends.first() {
                Some(&(ends, source)) if ends <= now || ends < until => {
                    self.ends.pop_first();
                    self.table.remove(&source);
                }
                _ => return false,
            }
        }
        true
    }

    /// What `source` still serves: the last offence and the time left, if any.
    /// The sentences being served, with what is left of each (an upgrade in place hands them
    /// to the next image).
    pub(crate) fn sentences(&self, now: Instant) -> Vec<(Cidr, Offence, Duration)> {
        self.table
            .iter()
            .filter(|(_, s)| s.until > now)
            .map(|(source, s)| (*source, s.last, s.until - now))
            .collect()
    }

    /// Sentences the previous image handed over, served to their end here.
    pub(crate) fn restore(&mut self, sentences: &[(Cidr, Offence, Duration)], now: Instant) {
        for (source, last, left) in sentences {
            let until = now + (*left).min(self.settings.max);
            if self.table.contains_key(source) || !self.make_room(until, now) {
                continue;
            }
            self.table.insert(*source, Sentence { until, last: *last });
            self.ends.insert((until, *source));
        }
    }

    pub(crate) fn serving(&mut self, source: &Cidr, now: Instant) -> Option<(Offence, Duration)> {
        let sentence = *self.table.get(source)?;
        if sentence.until <= now {
            self.table.remove(source);
            self.ends.remove(&(sentence.until, *source));
            return None;
        }
        Some((sentence.last, sentence.until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Penalty {
        Penalty {
            max: Duration::from_secs(100),
            exempt: vec!["10.9.0.0/16".parse().unwrap()],
            ..Penalty::from_str("crash=60s,error=5s").unwrap()
        }
    }

    fn source(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn offences_add_up_to_the_max() {
        let mut p = Penalties::new(settings());
        let now = Instant::now();
        let a = source("192.0.2.1/32");
        let from_a = ip("192.0.2.1");
        assert_eq!(
            p.penalise(from_a, a, Offence::Crash, now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            p.penalise(from_a, a, Offence::Crash, now),
            Some(Duration::from_secs(100))
        );
        assert_eq!(
            p.serving(&a, now + Duration::from_secs(99)),
            Some((Offence::Crash, Duration::from_secs(1)))
        );
        assert_eq!(p.serving(&a, now + Duration::from_secs(100)), None);
        // What costs nothing, and who is exempt, are not penalised.
        assert_eq!(p.penalise(from_a, a, Offence::Timeout, now), None);
        assert_eq!(
            p.penalise(ip("10.9.3.4"), source("10.9.3.0/24"), Offence::Crash, now),
            None
        );
    }

    #[test]
    fn a_full_table_keeps_the_longest_sentences() {
        let mut p = Penalties::new(settings());
        let now = Instant::now();
        for i in 0..MAX_PENALISED as u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            p.penalise(
                ip.into(),
                Cidr::source(ip.into(), 32, 128),
                Offence::Error,
                now,
            );
        }
        assert_eq!(p.table.len(), MAX_PENALISED);
        let long = source("203.0.113.1/32");
        assert!(
            p.penalise(ip("203.0.113.1"), long, Offence::Crash, now)
                .is_some()
        );
        assert_eq!(p.table.len(), MAX_PENALISED);
        // A penalty shorter than every one kept finds no room.
        let short = Penalty::from_str("error=1s").unwrap();
        let mut q = Penalties::new(Penalty {
            max: Duration::from_secs(100),
            ..short
        });
        q.table = p.table.clone();
        q.ends = p.ends.clone();
        let short_source = source("203.0.113.2/32");
        assert!(
            q.penalise(ip("203.0.113.2"), short_source, Offence::Error, now)
                .is_none()
        );
    }

    #[test]
    fn the_flag_takes_any_of_the_three_once() {
        let p = Penalty::from_str("timeout=10s,crash=1m").unwrap();
        assert_eq!(
            (p.crash, p.error, p.timeout),
            (
                Duration::from_secs(60),
                Duration::ZERO,
                Duration::from_secs(10)
            )
        );
        for bad in ["crash", "boom=1s", "crash=1s,crash=2s", "crash=soon"] {
            assert!(Penalty::from_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn how_a_worker_ended_names_the_offence() {
        use nix::sys::signal::Signal;
        assert_eq!(
            Offence::of(Ended::Signal(Signal::SIGSEGV, false), false, false),
            Some(Offence::Crash)
        );
        assert_eq!(
            Offence::of(Ended::Exit(EXIT_PANIC), false, false),
            Some(Offence::Crash)
        );
        assert_eq!(
            Offence::of(Ended::Exit(EXIT_BROKEN), false, false),
            Some(Offence::Error)
        );
        assert_eq!(
            Offence::of(Ended::Exit(EXIT_TIMED_OUT), false, false),
            Some(Offence::Timeout)
        );
        assert_eq!(
            Offence::of(Ended::Exit(0), true, false),
            Some(Offence::Timeout)
        );
        assert_eq!(Offence::of(Ended::Exit(EXIT_BROKEN), false, true), None);
        assert_eq!(Offence::of(Ended::Exit(1), false, false), None);
    }

    #[test]
    fn sentences_cross_to_another_table_with_what_is_left() {
        let now = Instant::now();
        let mut old = Penalties::new(settings());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        old.penalise(ip, source("192.0.2.1"), Offence::Crash, now);
        let handed = old.sentences(now + Duration::from_secs(10));
        assert_eq!(handed.len(), 1);
        assert_eq!(handed[0].2, Duration::from_secs(50));
        let mut new = Penalties::new(settings());
        let later = now + Duration::from_secs(10);
        new.restore(&handed, later);
        let (offence, left) = new.serving(&source("192.0.2.1"), later).unwrap();
        assert_eq!((offence, left), (Offence::Crash, Duration::from_secs(50)));
        assert_eq!(Offence::named("crash"), Some(Offence::Crash));
    }
}
