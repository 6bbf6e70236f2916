//! Writes the man pages (forkd.8, forkc.1) and shell completions (bash, zsh, fish) of both
//! programs into a directory, from the same clap definitions as --help, so they cannot drift.
//! packaging/build-deb runs it before building the package.
//!
//! Usage: cargo run --example package-docs -- OUTDIR

use std::path::{Path, PathBuf};

use clap_complete::Shell;

// The command-line modules of both programs, for their clap definitions only.
#[path = "../src/bin/shared/args.rs"]
#[allow(dead_code)]
mod args;
#[path = "../src/bin/forkc/cli.rs"]
#[allow(dead_code)]
mod forkc_cli;
#[path = "../src/bin/forkd/cli.rs"]
#[allow(dead_code)]
mod forkd_cli;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: package-docs OUTDIR");
        std::process::exit(2)
    }));
    std::fs::create_dir_all(out.join("man"))?;
    std::fs::create_dir_all(out.join("completions"))?;
    for (command, section) in [(forkd_cli::command(), "8"), (forkc_cli::command(), "1")] {
        write_man(&out, command, section)?;
    }
    for mut command in [forkd_cli::command(), forkc_cli::command()] {
        let name = command.get_name().to_string();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let path =
                clap_complete::generate_to(shell, &mut command, &name, out.join("completions"))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn write_man(out: &Path, command: clap::Command, section: &str) -> std::io::Result<()> {
    let name = command.get_name().to_string();
    let path = out.join("man").join(format!("{name}.{section}"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section(section)
        .manual("forkd")
        .source(format!("forkd {}", env!("CARGO_PKG_VERSION")))
        .render(&mut page)?;
    std::fs::write(&path, page)?;
    println!("{}", path.display());
    Ok(())
}
