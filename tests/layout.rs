//! The forkd binary's layout: the code a worker runs lies in one 64 KiB-aligned section
//! (src/bin/forkd/child-path.ld), so that a forked child faults it in at once. Linux, where
//! build.rs gives the linker that script.
#![cfg(target_os = "linux")]

use std::process::Command;

/// The address range of `section` in `binary`, from `readelf -S`.
fn section_range(binary: &str, section: &str) -> Option<(u64, u64)> {
    let out = Command::new("readelf")
        .args(["-SW", binary])
        .output()
        .expect("readelf runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == section)?;
        let address = u64::from_str_radix(fields.get(at + 2)?, 16).ok()?;
        let size = u64::from_str_radix(fields.get(at + 4)?, 16).ok()?;
        Some((address, address + size))
    })
}

/// Every defined function symbol of `binary` with its address, from `nm`.
fn functions(binary: &str) -> Vec<(u64, String)> {
    let out = Command::new("nm")
        .args(["--defined-only", binary])
        .output()
        .expect("nm runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            let name = fields.next()?;
            matches!(kind, "t" | "T").then(|| (address, name.to_string()))
        })
        .collect()
}

#[test]
fn the_workers_path_is_one_section_on_a_64_kib_boundary() {
    let binary = env!("CARGO_BIN_EXE_forkd");
    let (start, end) = section_range(binary, ".text.child_path")
        .expect("forkd has a .text.child_path section (build.rs passes child-path.ld)");
    assert_eq!(start % 0x10000, 0, "the section starts a 64 KiB window");
    assert!(
        end - start <= 0x10000,
        "the section fits one 64 KiB window: {:#x}",
        end - start
    );
    let functions = functions(binary);
    // What a churn connection's child runs, by mangled-name fragments (both manglings); a
    // function may be inlined into its caller, which is named as the alternative.
    let path: [&[&[&str]]; 7] = [
        &[&["fork_worker"]],
        &[&["run_child"]],
        &[&["Decoder", "read_uninit"]],
        &[&["IdleClock", "read_into"]],
        &[&["7session5serve"], &["7handler4Work5serve"]],
        &[&["WorkerAllocator", "GlobalAlloc", "5alloc"]],
        &[&["6Socket", "AsFd"]],
    ];
    for alternatives in path {
        let found: Vec<&(u64, String)> = functions
            .iter()
            .filter(|(_, name)| {
                alternatives
                    .iter()
                    .any(|fragments| fragments.iter().all(|f| name.contains(f)))
            })
            .collect();
        assert!(!found.is_empty(), "no function named like {alternatives:?}");
        for (address, name) in found {
            assert!(
                (start..end).contains(address),
                "{name} at {address:#x} is outside .text.child_path {start:#x}..{end:#x}"
            );
        }
    }
}
