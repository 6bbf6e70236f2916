//! A program's stderr, turned into log lines tagged with the program's pid.
//!
//! Each exec'd child writes its stderr into a pipe whose read end the supervisor keeps in its
//! poll loop; whatever arrives is cut into lines and logged as `stderr pid=N: text`. Reads are
//! bounded per wake-up, very long lines are split, and at most 100 lines a second are logged
//! per program (the rest counted in a `stderr pid=N suppressed=M` line), so a chatty program
//! cannot take the supervisor over, grow it, or choose the log's volume.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::Pid;

/// Longest piece of a line logged at once; longer lines continue in further log lines.
const MAX_LINE: usize = 2048;

/// Where `bytes` may be cut so that no UTF-8 sequence is split: before a sequence that the end
/// leaves incomplete (at most 3 bytes back), else at the end. Bytes that are not UTF-8 at all
/// are cut anywhere.
fn utf8_boundary(bytes: &[u8]) -> usize {
    let end = bytes.len();
    for back in 1..=3.min(end) {
        let byte = bytes[end - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for its lead
        }
        let wanted = match byte {
            b if b & 0b1110_0000 == 0b1100_0000 => 2,
            b if b & 0b1111_0000 == 0b1110_0000 => 3,
            b if b & 0b1111_1000 == 0b1111_0000 => 4,
            _ => return end,
        };
        return if back < wanted { end - back } else { end };
    }
    end
}
/// Bytes read from one pipe per wake-up.
const READ_BUDGET: usize = 64 * 1024;

/// Lines of one program logged per second at most; the rest are counted and reported in one
/// line when the second is over, so a program (or a client that makes it talk) cannot choose
/// the log's volume.
const LINES_PER_SEC: u32 = 100;

/// Cuts a byte stream into log lines for one program.
pub struct LineSplitter {
    pid: Pid,
    partial: Vec<u8>,
    window_start: Option<Instant>,
    lines_in_window: u32,
    suppressed: u64,
}

impl LineSplitter {
    pub fn new(pid: Pid) -> LineSplitter {
        LineSplitter {
            pid,
            partial: Vec::new(),
            window_start: None,
            lines_in_window: 0,
            suppressed: 0,
        }
    }

    /// Logs every complete line in `bytes` (and pieces of overlong ones); keeps the rest.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.emit(self.partial.len(), false);
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    // Cut between characters, not inside one: a UTF-8 sequence begun at the
                    // end goes on to the next piece.
                    let cut = utf8_boundary(&self.partial);
                    self.emit(cut, true);
                }
            }
        }
    }

    /// Logs what is left at end of stream.
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.emit(self.partial.len(), false);
        }
        self.report_suppressed();
    }

    /// Logs the first `len` bytes kept as one line (`continued=yes` when the line goes on in
    /// the next piece) and keeps the rest.
    fn emit(&mut self, len: usize, continued: bool) {
        let now = Instant::now();
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= Duration::from_secs(1) {
            self.report_suppressed();
            self.window_start = Some(now);
            self.lines_in_window = 0;
        }
        if self.lines_in_window < LINES_PER_SEC {
            self.lines_in_window += 1;
            let text = String::from_utf8_lossy(&self.partial[..len]);
            log::info!(
                "stderr pid={} line={}{}",
                self.pid,
                crate::logging::quote(text.trim_end_matches('\r')),
                if continued { " continued=yes" } else { "" }
            );
        } else {
            self.suppressed += 1;
        }
        self.partial.drain(..len);
    }

    fn report_suppressed(&mut self) {
        if self.suppressed > 0 {
            log::info!(
                "stderr pid={} suppressed={} reason=\"more than {LINES_PER_SEC} lines in 1s\"",
                self.pid,
                self.suppressed
            );
            self.suppressed = 0;
        }
    }
}

struct Relay {
    pipe: OwnedFd,
    lines: LineSplitter,
}

/// The stderr pipes of running programs.
#[derive(Default)]
pub struct Relays {
    list: Vec<Relay>,
}

impl Relays {
    /// Starts relaying `pipe` (a read end, made non-blocking here) for `pid`.
    pub fn add(&mut self, pipe: OwnedFd, pid: Pid) {
        crate::fds::set_nonblocking(&pipe);
        self.list.push(Relay {
            pipe,
            lines: LineSplitter::new(pid),
        });
    }

    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.list.iter().map(|r| r.pipe.as_fd())
    }

    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// Each pipe and its program's pid (an upgrade hands them over).
    pub fn pipes(&self) -> Vec<(RawFd, i32)> {
        self.list
            .iter()
            .map(|r| (r.pipe.as_raw_fd(), r.lines.pid.as_raw()))
            .collect()
    }

    /// Descriptors a new child must close.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.list.iter().map(|r| r.pipe.as_raw_fd()).collect()
    }

    /// Reads from the pipes at `ready` (indices into [`Relays::fds`]); drops those at EOF.
    pub fn service(&mut self, ready: &[usize]) {
        let mut done = vec![false; self.list.len()];
        for &i in ready {
            done[i] = read_some(&mut self.list[i]);
        }
        let mut index = 0;
        self.list.retain(|_| {
            index += 1;
            !done[index - 1]
        });
    }

    /// Logs what the pipe of `pid` still holds and closes it: the relay ends with its
    /// program, even when a descendant keeps the pipe open (it then gets EPIPE).
    pub fn finish(&mut self, pid: Pid) {
        if let Some(index) = self.list.iter().position(|r| r.lines.pid == pid) {
            let mut relay = self.list.swap_remove(index);
            if !read_some(&mut relay) {
                relay.lines.finish();
            }
        }
    }

    /// Logs what the pipes still hold (their programs have ended), without waiting for more:
    /// a program's own child may hold a pipe open forever.
    pub fn finish_all(&mut self) {
        for relay in &mut self.list {
            if !read_some(relay) {
                relay.lines.finish();
            }
        }
        self.list.clear();
    }
}

/// Reads what is there; true at end of stream (or error), after logging the last piece.
fn read_some(relay: &mut Relay) -> bool {
    let mut buf = [0u8; 8192];
    let mut taken = 0;
    while taken < READ_BUDGET {
        match nix::unistd::read(&relay.pipe, &mut buf) {
            Ok(0) => {
                relay.lines.finish();
                return true;
            }
            Ok(n) => {
                taken += n;
                relay.lines.feed(&buf[..n]);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return false,
            Err(_) => {
                relay.lines.finish();
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::utf8_boundary;

    #[test]
    fn pieces_are_cut_between_characters() {
        let e_acute = "é".as_bytes(); // 2 bytes
        let mut bytes = b"ab".to_vec();
        bytes.push(e_acute[0]);
        assert_eq!(
            utf8_boundary(&bytes),
            2,
            "the lead of é waits for the next piece"
        );
        bytes.push(e_acute[1]);
        assert_eq!(utf8_boundary(&bytes), 4, "é whole");
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(utf8_boundary(&[b'x', euro[0], euro[1]]), 1);
        assert_eq!(utf8_boundary(b"plain"), 5);
        assert_eq!(utf8_boundary(&[0xff, 0xfe]), 2, "not UTF-8: anywhere");
    }
}
