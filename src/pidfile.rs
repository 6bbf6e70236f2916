//! The `--pidfile`: taken before anything is bound, held (locked) for the life of the
//! supervisor, removed when it exits.
//!
//! The file is opened without following a symbolic link (a link planted at the path cannot
//! make forkd overwrite its target), must be a regular file, and is locked with flock(2): a
//! second forkd given the same pidfile is refused with the pid of the one that holds it,
//! instead of overwriting the file and deleting it on exit while the first still runs. The
//! lock lasts as long as the open file, so a crash releases it; a stale file left behind is
//! simply taken over.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// A pidfile this process holds; removed when dropped.
pub struct Pidfile {
    path: PathBuf,
    file: Flock<File>,
}

impl Pidfile {
    /// Opens and locks `path`, then writes this process's pid and a newline into it.
    pub fn take(path: &Path) -> Result<Pidfile, String> {
        let shown = path.display();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => format!("pidfile {shown} is a symbolic link: refused"),
                _ => format!("cannot open pidfile {shown}: {e}"),
            })?;
        let metadata = file
            .metadata()
            .map_err(|e| format!("pidfile {shown}: {e}"))?;
        if !metadata.is_file() {
            return Err(format!("pidfile {shown} is not a regular file: refused"));
        }
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(format!(
                    "pidfile {shown} is held by forkd pid {}: another instance is running",
                    if holder.is_empty() {
                        "(unknown)"
                    } else {
                        holder
                    }
                ));
            }
            Err((_, e)) => return Err(format!("cannot lock pidfile {shown}: {e}")),
        };
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        };
        write(&mut file).map_err(|e| format!("cannot write pidfile {shown}: {e}"))?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Takes over the pidfile the previous image of this process held (an upgrade in place):
    /// the lock belongs to the open file, which crossed the exec, so it is held throughout.
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd, path: &Path) -> Result<Pidfile, String> {
        let file = Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| format!("pidfile {}: {e}", path.display()))?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Its path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor a worker process must close (it would otherwise share the lock).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for Pidfile {
    /// Removes the file if the path still names the file this process locked (not one an
    /// admin put there since), while the lock is still held.
    fn drop(&mut self) {
        let at_path = crate::sandbox::path_metadata(&self.path, false);
        let ours = match (at_path, self.file.metadata()) {
            (Ok(at_path), Ok(locked)) => {
                at_path.dev() == locked.dev() && at_path.ino() == locked.ino()
            }
            _ => false,
        };
        if !ours {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!(
                "stop pidfile={} reason=\"cannot remove: {e}\"",
                self.path.display()
            );
        }
    }
}
