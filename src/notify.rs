//! Telling systemd how forkd is doing (sd_notify(3)): READY=1 once serving, RELOADING=1 then
//! READY=1 again around a reload, STOPPING=1 on shutdown, and STATUS= with the active and maximum children when that changes, at most four
//! times a second so a busy server does not flood the manager.
//!
//! The socket is non-blocking: a manager that stops reading costs a warning (once), never a
//! supervisor waiting in send. A status that could not be sent stays pending and is tried
//! again at the next interval.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

const STATUS_INTERVAL: Duration = Duration::from_millis(250);

pub struct Notifier {
    /// NOTIFY_SOCKET as it was given, for the next image at an upgrade.
    path: String,
    socket: UnixDatagram,
    target: SocketAddr,
    sent_status: Option<String>,
    sent_at: Option<Instant>,
    pending: Option<String>,
    /// Whether a failed send was logged already: one warning, not one per interval.
    warned: bool,
    /// STOPPING=1 was sent: nothing more.
    stopped: bool,
}

impl Notifier {
    /// From NOTIFY_SOCKET (a path, or `@name` for an abstract socket), which is then cleared
    /// so programs started later do not talk to systemd in forkd's name.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        // SAFETY: forkd is single-threaded at start.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        Notifier::to(path.to_string_lossy().into_owned())
    }

    /// For the socket NOTIFY_SOCKET named (as the previous image hands it over at an
    /// upgrade in place).
    pub fn to(path: String) -> Option<Notifier> {
        let target = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => SocketAddr::from_pathname(&path),
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                log::warn!(
                    "status notify_socket={path} reason={}",
                    crate::logging::quote(&e.to_string())
                );
                return None;
            }
        };
        let socket = UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(Notifier {
            path,
            socket,
            target,
            sent_status: None,
            sent_at: None,
            pending: None,
            warned: false,
            stopped: false,
        })
    }

    /// Sends without waiting; false (and one warning) when the manager did not take it.
    fn send(&mut self, message: &str) -> bool {
        match self.socket.send_to_addr(message.as_bytes(), &self.target) {
            Ok(_) => true,
            Err(e) => {
                if !self.warned {
                    self.warned = true;
                    log::warn!(
                        "status notify={} reason={}",
                        message.lines().next().unwrap_or(""),
                        crate::logging::quote(&e.to_string())
                    );
                }
                false
            }
        }
    }

    pub fn ready(&mut self, status: String) {
        let now = Instant::now();
        if self.send(&format!("READY=1\nSTATUS={status}")) {
            self.sent_status = Some(status);
        } else {
            // READY=1 alone is what systemd waits for: try it again with the next status.
            self.pending = Some(status);
        }
        self.sent_at = Some(now);
    }

    /// Says a reload has begun (RELOADING=1, with the CLOCK_MONOTONIC time systemd's
    /// notify-reload services give it); [`Notifier::ready`] says it is over.
    pub fn reloading(&mut self) {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock and a timespec to fill, which lives across the call.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
        let now = time.tv_sec as u64 * 1_000_000 + time.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    /// Says forkd is stopping; no status is sent after this.
    pub fn stopping(&mut self, status: String) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
        self.pending = None;
        self.stopped = true;
    }

    /// Records the status; it is sent now or when the interval allows ([`Notifier::flush`]).
    pub fn status(&mut self, status: String, now: Instant) {
        if self.stopped {
            return;
        }
        if self.sent_status.as_deref() == Some(status.as_str()) {
            self.pending = None;
            return;
        }
        self.pending = Some(status);
        self.flush(now);
    }

    /// Sends a pending status if the interval has passed.
    pub fn flush(&mut self, now: Instant) {
        if self.due().is_some_and(|due| due <= now)
            && let Some(status) = self.pending.take()
        {
            let ready = if self.sent_status.is_none() {
                "READY=1\n"
            } else {
                ""
            };
            if self.send(&format!("{ready}STATUS={status}")) {
                self.sent_status = Some(status);
            } else {
                self.pending = Some(status);
            }
            self.sent_at = Some(now);
        }
    }

    /// When a pending status may be sent.
    pub fn due(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(
            self.sent_at
                .map_or_else(Instant::now, |t| t + STATUS_INTERVAL),
        )
    }

    /// NOTIFY_SOCKET as it was given.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
