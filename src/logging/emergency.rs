//! One log line written from a signal handler, where the logger cannot be used (it locks and
//! allocates): the line is built in a buffer on the stack and sent with a single
//! async-signal-safe call, to the syslog socket or to the stderr sink the logger uses.

use std::sync::atomic::{AtomicI32, Ordering};

/// The descriptor lines go to: the connected syslog socket, or the stderr sink.
static FD: AtomicI32 = AtomicI32::new(2);
/// The syslog priority (facility and severity `err`), or -1 for the stderr format.
static PRIORITY: AtomicI32 = AtomicI32::new(-1);

const PROGRAM: &[u8] = b"forkd";

/// Where emergency lines go from now on (each time the logger connects).
pub(super) fn direct(fd: i32, syslog_priority: Option<i32>) {
    FD.store(fd, Ordering::Relaxed);
    PRIORITY.store(syslog_priority.unwrap_or(-1), Ordering::Relaxed);
}

/// Writes `error pid=N reason="REASON"` as one line. Async-signal-safe: no lock, no
/// allocation, one non-blocking send (or write); a line that does not fit 512 bytes is cut.
pub(crate) fn error(reason: &[u8]) {
    line(Severity::Error, b"error", &[b" reason=\"", reason, b"\""]);
}

/// Writes `sandbox pid=N refused=CALL` as one warning line, as [`error`] writes its line: a
/// system call a sandboxed worker made and its seccomp filter refused.
pub(crate) fn refused(call: &[u8]) {
    line(Severity::Warning, b"sandbox", &[b" refused=", call]);
}

/// Syslog severities of the lines written here.
#[derive(Clone, Copy)]
enum Severity {
    Error = 3,
    Warning = 4,
}

/// `EVENT pid=N` and then `fields`, with the sink's prefix.
fn line(severity: Severity, event: &[u8], fields: &[&[u8]]) {
    let mut buf = Buffer {
        bytes: [0; 512],
        len: 0,
    };
    let priority = PRIORITY.load(Ordering::Relaxed);
    // SAFETY: getpid is async-signal-safe and cannot fail.
    let pid = unsafe { libc::getpid() };
    // As every line on that sink: syslog's `<N>forkd[PID]: `, the journal's `<N>`, or stderr's
    // `forkd[PID]: ` (the event word says what it is).
    let journal = priority < 0 && super::STDERR_IS_JOURNAL.load(Ordering::Relaxed);
    if priority >= 0 {
        buf.push(b"<");
        buf.push_number((priority & !7 | severity as i32) as u64);
        buf.push(b">");
    } else if journal {
        buf.push(b"<");
        buf.push_number(severity as u64);
        buf.push(b">");
    }
    if !journal {
        buf.push(PROGRAM);
        buf.push(b"[");
        buf.push_number(pid as u64);
        buf.push(b"]: ");
    }
    buf.push(event);
    buf.push(b" pid=");
    buf.push_number(pid as u64);
    for field in fields {
        buf.push(field);
    }
    if priority < 0 {
        buf.push(b"\n");
    }
    let fd = FD.load(Ordering::Relaxed);
    let bytes = &buf.bytes[..buf.len];
    // SAFETY: `bytes` is a live buffer of that length; send and write are async-signal-safe.
    // A descriptor that is not a socket fails send with ENOTSOCK: then, and only then, it is
    // written (a socket that is full, EAGAIN, loses the line rather than make this wait).
    unsafe {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        if libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags) < 0
            && *libc::__errno_location() == libc::ENOTSOCK
        {
            libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        }
    }
}

struct Buffer {
    bytes: [u8; 512],
    len: usize,
}

impl Buffer {
    fn push(&mut self, part: &[u8]) {
        let n = part.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&part[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_in_syslog_form_reaches_the_socket_whole() {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        use std::os::fd::AsRawFd;
        direct(ours.as_raw_fd(), Some(3 << 3 | 3));
        error(b"x");
        let mut got = [0u8; 600];
        let n = theirs.recv(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got[..n]).into_owned();
        let pid = std::process::id();
        assert_eq!(
            text,
            format!("<27>forkd[{pid}]: error pid={pid} reason=\"x\"")
        );
        refused(b"socket");
        let n = theirs.recv(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got[..n]).into_owned();
        assert_eq!(
            text,
            format!("<28>forkd[{pid}]: sandbox pid={pid} refused=socket")
        );
        direct(2, None);
    }
}
