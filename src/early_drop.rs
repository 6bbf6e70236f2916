//! Random early drop (`--early-drop START:PERCENT`), as OpenSSH's MaxStartups: from START
//! conversations running, a new connection is refused (ERROR 4) with probability PERCENT,
//! rising linearly to 100% at `--max-children`, so a flood meets a slope instead of a cliff and
//! some new clients still get through while the limit is near.

use std::str::FromStr;

/// `START:PERCENT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyDrop {
    /// Conversations running from which new connections may be dropped.
    pub start: u32,
    /// The chance of a drop at `start`, in percent (1 to 100).
    pub percent: u8,
}

impl FromStr for EarlyDrop {
    type Err = String;

    fn from_str(s: &str) -> Result<EarlyDrop, String> {
        let wanted = || format!("'{s}' is not START:PERCENT (for example 10:30)");
        let (start, percent) = s.split_once(':').ok_or_else(wanted)?;
        let start: u32 = start.trim().parse().map_err(|_| wanted())?;
        let percent: u8 = percent
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| wanted())?;
        if start == 0 {
            return Err(format!("'{s}': START must be at least 1"));
        }
        if !(1..=100).contains(&percent) {
            return Err(format!("'{s}': PERCENT must be from 1 to 100"));
        }
        Ok(EarlyDrop { start, percent })
    }
}

impl std::fmt::Display for EarlyDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.start, self.percent)
    }
}

impl EarlyDrop {
    /// The chance, in parts per 10,000, that a connection arriving while `active` of `max`
    /// conversations run is dropped.
    pub(crate) fn chance(&self, active: usize, max: usize) -> u32 {
        let start = self.start as usize;
        if active < start {
            return 0;
        }
        if active >= max || max <= start {
            return 10_000;
        }
        let base = u64::from(self.percent) * 100;
        let rise = (10_000 - base) * (active - start) as u64 / (max - start) as u64;
        (base + rise) as u32
    }
}

/// The supervisor's dice: xorshift64*, seeded from the kernel's random source, so that when a
/// drop happens cannot be told from outside.
pub(crate) struct Dice(u64);

impl Dice {
    pub(crate) fn new() -> Dice {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most the 8 bytes of `seed`.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let seed = u64::from_ne_bytes(seed);
        let fallback = || std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        Dice(if got == 8 && seed != 0 {
            seed
        } else {
            fallback()
        })
    }

    /// Whether an event of `chance` parts per 10,000 happens.
    pub(crate) fn roll(&mut self, chance: u32) -> bool {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let value = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        (value % 10_000) < u64::from(chance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_and_percent_and_refuses_the_rest() {
        assert_eq!(
            "10:30".parse(),
            Ok(EarlyDrop {
                start: 10,
                percent: 30
            })
        );
        assert_eq!("5:100%".parse::<EarlyDrop>().map(|d| d.percent), Ok(100));
        for bad in ["", "10", "0:30", "10:0", "10:101", "a:b", "-1:30"] {
            assert!(bad.parse::<EarlyDrop>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_chance_rises_linearly_from_start_to_the_limit() {
        let drop = EarlyDrop {
            start: 10,
            percent: 30,
        };
        assert_eq!(drop.chance(9, 20), 0);
        assert_eq!(drop.chance(10, 20), 3_000);
        assert_eq!(drop.chance(15, 20), 6_500);
        assert_eq!(drop.chance(20, 20), 10_000);
    }

    #[test]
    fn the_dice_follow_the_chance() {
        let mut dice = Dice::new();
        let hits = (0..100_000).filter(|_| dice.roll(3_000)).count();
        assert!((27_000..33_000).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| dice.roll(0)));
        assert!((0..1000).all(|_| dice.roll(10_000)));
    }
}
