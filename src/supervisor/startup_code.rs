//! The code the supervisor keeps mapped once it serves. Start-up (the command line, the
//! configuration, the sandbox's filter compiler, the listeners, the privilege drop) runs code
//! from all over the program, and the kernel maps code 64 KiB around each page that faults:
//! a statically linked forkd had nearly all of its 3 MiB of code and read-only data in its
//! page tables, nine tenths of its resident size, though the serving loop runs a fraction
//! of it. Right before serving, those page-table entries are dropped (`MADV_DONTNEED`); the
//! pages stay in the page cache, shared with every other process that maps the file, and
//! what the loop runs is mapped again at its first use.
//!
//! Only mappings that are read-only, private, of a file the process runs code from (the
//! program, and in a dynamically linked build its libraries), and that hold no page of
//! their own: for a private mapping `MADV_DONTNEED` also discards the pages the process
//! changed, and the relocated read-only data of a position-independent program is such a
//! mapping (`Anonymous:` above zero in /proc/self/smaps; a private copy of a huge page shows
//! as `Private_Hugetlb:`). A mapping the smaps text does not show clean is left alone, and
//! nothing is done while the process has a second thread, which could map something else
//! where a mapping was when the text was read (a library being loaded: its relocated data
//! would be lost).
//!
//! Again after a SIGHUP, whose reload runs start-up's code once more.

/// Drops the page-table entries of the process's clean code mappings (see the module's
/// documentation). Best effort: without /proc, or with more than one thread, nothing changes.
pub(crate) fn forget() {
    #[cfg(target_os = "linux")]
    {
        if !single_threaded() {
            return;
        }
        // Bytes: a path in the text need not be UTF-8, and none is used.
        let Ok(smaps) = std::fs::read("/proc/self/smaps") else {
            return;
        };
        for range in clean_code(&String::from_utf8_lossy(&smaps)) {
            // SAFETY: the range is a whole mapping that is read-only, private and holds no
            // page of this process's own, as the smaps text just read shows; the process has
            // one thread, this one, which changed no mapping since. Dropping the mapping's
            // page-table entries only makes the next access map the file's page again.
            unsafe {
                libc::madvise(
                    range.start as *mut libc::c_void,
                    range.end - range.start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

/// Whether the calling thread is the process's only one (`Threads:` in /proc/self/status).
#[cfg(target_os = "linux")]
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.split_whitespace().eq(["Threads:", "1"]))
    })
}

/// One mapping as /proc/PID/smaps shows it, as far as choosing goes.
struct Mapping {
    range: std::ops::Range<usize>,
    /// The permissions field, e.g. `r-xp`.
    perms: String,
    /// Device and inode of the mapped file; None for anonymous memory and the kernel's
    /// mappings ([vdso], [stack], ...), whose inode is 0.
    file: Option<(String, u64)>,
    /// The `Anonymous:`, `Swap:` and `Private_Hugetlb:` figures in KiB, where the text gave
    /// them.
    anonymous: Option<u64>,
    swap: Option<u64>,
    private_huge: Option<u64>,
    /// `VmFlags:` has `ht` (hugetlb).
    hugetlb: bool,
}

impl Mapping {
    fn is_clean_read_only(&self) -> bool {
        let perms = self.perms.as_bytes();
        perms.len() == 4
            && perms[1] == b'-'
            && perms[3] == b'p'
            && self.anonymous == Some(0)
            && self.swap == Some(0)
            && self.private_huge == Some(0)
            && !self.hugetlb
    }
}

/// The mappings of an smaps text whose page-table entries may be dropped: read-only,
/// private and clean, of a file some mapping of which is executable.
fn clean_code(smaps: &str) -> Vec<std::ops::Range<usize>> {
    let maps = parse(smaps);
    let code_files: Vec<&(String, u64)> = maps
        .iter()
        .filter(|m| m.perms.as_bytes().get(2) == Some(&b'x'))
        .filter_map(|m| m.file.as_ref())
        .collect();
    maps.iter()
        .filter(|m| m.is_clean_read_only())
        .filter(|m| m.file.as_ref().is_some_and(|f| code_files.contains(&f)))
        .map(|m| m.range.clone())
        .collect()
}

/// A mapping's first line is `START-END PERMS OFFSET DEV INODE [PATH]`; the lines after it,
/// up to the next mapping, are `Field: value [kB]`.
fn parse(smaps: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some(name) = first.strip_suffix(':') {
            if let Some(mapping) = maps.last_mut() {
                if name == "VmFlags" {
                    mapping.hugetlb = fields.any(|flag| flag == "ht");
                    continue;
                }
                let value = fields.next().and_then(|v| v.parse::<u64>().ok());
                match name {
                    "Anonymous" => mapping.anonymous = value,
                    "Swap" => mapping.swap = value,
                    "Private_Hugetlb" => mapping.private_huge = value,
                    _ => {}
                }
            }
            continue;
        }
        let Some(range) = first.split_once('-').and_then(|(start, end)| {
            Some(usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?)
        }) else {
            continue;
        };
        let perms = fields.next().unwrap_or_default().to_string();
        let _offset = fields.next();
        let device = fields.next().unwrap_or_default().to_string();
        let inode = fields
            .next()
            .and_then(|i| i.parse::<u64>().ok())
            .unwrap_or(0);
        maps.push(Mapping {
            range,
            perms,
            file: (inode != 0).then_some((device, inode)),
            anonymous: None,
            swap: None,
            private_huge: None,
            hugetlb: false,
        });
    }
    maps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like a statically linked forkd's smaps (fields trimmed to those that matter
    /// and a few that do not).
    const SMAPS: &str = "\
7f0000000000-7f00000d4000 r--p 00000000 fe:00 42                         /usr/sbin/forkd
Rss:                 512 kB
Anonymous:             0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
7f00000e0000-7f000035a000 r-xp 000e0000 fe:00 42                         /usr/sbin/for kd (deleted)
Rss:                2472 kB
Anonymous:             0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me
7f000035a000-7f000036c000 r--p 00359000 fe:00 42                         /usr/sbin/forkd
Anonymous:            72 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
7f000036c000-7f0000370000 rw-p 0036a000 fe:00 42                         /usr/sbin/forkd
Anonymous:            16 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
7f0000400000-7f0000500000 r--p 00000000 fe:00 99                         /var/lib/data file
Anonymous:             0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
7f0000600000-7f0000700000 r--s 00000000 00:01 7                          /memfd:table (deleted)
Anonymous:             0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
7f0000800000-7f0000810000 r--p 00010000 fe:00 43                         /usr/lib/libx.so
Anonymous:             0 kB
Private_Hugetlb:       0 kB
Swap:                  4 kB
7f0000810000-7f0000820000 r-xp 00020000 fe:00 43                         /usr/lib/libx.so
Anonymous:             0 kB
Swap:                  0 kB
7f0000a00000-7f0000c00000 r-xp 00000000 00:0f 44                         /memfd:code (deleted)
Anonymous:             0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me ht
7f0000c00000-7f0000e00000 r--p 00000000 00:0f 44                         /memfd:code (deleted)
Anonymous:             0 kB
Private_Hugetlb:    2048 kB
Swap:                  0 kB
7f0000900000-7f0000902000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Anonymous:            20 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_code_files_are_chosen() {
        assert_eq!(
            clean_code(SMAPS),
            vec![
                0x7f00_0000_0000..0x7f00_000d_4000,
                0x7f00_000e_0000..0x7f00_0035_a000
            ],
            "the program's read-only data and code; not its relocated data (pages of its \
             own), its data, a file it only reads, a shared mapping, a library mapping with \
             swapped pages or without a Private_Hugetlb figure, hugetlb code or a private \
             copy of a huge page, the vdso or the stack"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_clean_code_to_forget() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let chosen = clean_code(&smaps);
        let here = this_process_has_clean_code_to_forget as *const () as usize;
        assert!(
            chosen.iter().any(|r| r.contains(&here)),
            "this test's own code lies in a chosen mapping: {chosen:x?}"
        );
    }
}
