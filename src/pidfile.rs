//! The `--pidfile`: written once the listeners are bound, removed when forkd exits.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A written pidfile; [`Pidfile::remove`] deletes it.
pub struct Pidfile {
    path: PathBuf,
}

impl Pidfile {
    /// Writes this process's pid and a newline, replacing what was there.
    pub fn write(path: &Path) -> Result<Pidfile, String> {
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(path)?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        };
        write().map_err(|e| format!("cannot write pidfile {}: {e}", path.display()))?;
        Ok(Pidfile {
            path: path.to_path_buf(),
        })
    }

    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!(
                "stop pidfile={} reason=\"cannot remove: {e}\"",
                self.path.display()
            );
        }
    }
}
