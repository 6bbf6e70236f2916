//! Writes the man pages (forkd.8, forkc.1) and shell completions (bash, zsh, fish) of both
//! programs into a directory. Everything about the command line (synopsis, options, forkc's
//! commands, examples) comes from the same clap definitions as --help, so it cannot drift; the
//! prose a clap definition has no place for (description, files, environment, signals, exit
//! status, see also) is roff kept beside them in packaging/man/. packaging/build-deb runs it
//! before building the package.
//!
//! Usage: cargo run --example package-docs -- OUTDIR

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};
use clap_complete::Shell;

// The command-line modules of both programs, for their clap definitions only.
#[path = "../src/bin/shared/args.rs"]
#[allow(dead_code)]
mod args;
#[path = "../src/bin/forkd/file.rs"]
#[allow(dead_code)]
mod file;
#[path = "../src/bin/forkc/cli.rs"]
#[allow(dead_code)]
mod forkc_cli;
#[path = "../src/bin/forkd/cli.rs"]
#[allow(dead_code)]
mod forkd_cli;

const PROSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/man");

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: package-docs OUTDIR");
        std::process::exit(2)
    }));
    std::fs::create_dir_all(out.join("man"))?;
    std::fs::create_dir_all(out.join("completions"))?;
    let forkd_intro = format!("{}\n", roff_text(forkd_cli::UNITS));
    write_man(
        &out,
        forkd_cli::command(),
        "8",
        &forkd_intro,
        forkd_cli::EXAMPLES,
    )?;
    write_man(&out, forkc_cli::command(), "1", "", forkc_cli::EXAMPLES)?;
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

/// One page: NAME, SYNOPSIS, DESCRIPTION (packaging/man/NAME.SECTION.description, then
/// `after_description`), OPTIONS, COMMANDS (where there are subcommands), EXAMPLES, then the
/// sections of packaging/man/NAME.SECTION.sections.
fn write_man(
    out: &Path,
    command: Command,
    section: &str,
    after_description: &str,
    examples: &[(&str, &[&str])],
) -> std::io::Result<()> {
    // The `help` subcommand is --help said another way; it gets no entry of its own.
    let command = command.disable_help_subcommand(true);
    let name = command.get_name().to_string();
    let prose = |part: &str| std::fs::read_to_string(format!("{PROSE}/{name}.{section}.{part}"));
    let man = clap_mangen::Man::new(command.clone())
        .section(section)
        .manual("forkd")
        .source(format!("forkd {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    page.extend(synopsis(&command).as_bytes());
    page.extend(b".SH DESCRIPTION\n");
    page.extend(prose("description")?.as_bytes());
    page.extend(after_description.as_bytes());
    page.extend(options(&man)?.as_bytes());
    if command.has_subcommands() {
        page.extend(commands(&command).as_bytes());
    }
    page.extend(examples_section(examples).as_bytes());
    page.extend(prose("sections")?.as_bytes());
    let path = out.join("man").join(format!("{name}.{section}"));
    std::fs::write(&path, page)?;
    println!("{}", path.display());
    Ok(())
}

/// clap_mangen's OPTIONS, with each group of options (a help heading: LIMITS, ADMISSION...)
/// a subsection of it rather than a section of its own.
fn options(man: &clap_mangen::Man) -> std::io::Result<String> {
    let mut rendered = Vec::new();
    man.render_options_section(&mut rendered)?;
    let rendered = String::from_utf8(rendered).expect("roff is text");
    let mut text = String::new();
    let mut first = true;
    for line in rendered.lines() {
        match line.strip_prefix(".SH ") {
            Some(_) if first => {
                first = false;
                let _ = writeln!(text, "{line}");
            }
            Some(heading) => {
                let mut words = heading.to_lowercase();
                words[..1].make_ascii_uppercase();
                let _ = writeln!(text, ".SS {words}");
            }
            _ => {
                let _ = writeln!(text, "{line}");
            }
        }
    }
    Ok(text)
}

/// Every option with its argument (`[--listen ADDR]`), then the operands; for a program with
/// commands, one line per command. Words are not broken inside nor hyphenated.
fn synopsis(command: &Command) -> String {
    let name = command.get_name();
    let mut text = String::from(".SH SYNOPSIS\n.nh\n.ad l\n");
    if command.has_subcommands() {
        let global = usage(command);
        for sub in command.get_subcommands() {
            let _ = writeln!(
                text,
                ".PP\n.B {name}\n{global}\n.B {}\n{}",
                sub.get_name(),
                usage(sub)
            );
        }
    } else {
        let _ = writeln!(text, ".B {name}\n{}", usage(command));
    }
    text.push_str(".ad\n.hy\n");
    text
}

fn usage(command: &Command) -> String {
    let mut words = Vec::new();
    let mut operands = Vec::new();
    for arg in shown(command) {
        if arg.is_positional() {
            let value = value_name(arg);
            operands.push(if arg.is_last_set() {
                format!("[\\fB\\-\\-\\fR \\fI{value}\\fR]")
            } else if arg.is_required_set() {
                format!("\\fI{value}\\fR...")
            } else {
                format!("[\\fI{value}\\fR...]")
            });
            continue;
        }
        let mut word = flag(arg);
        if matches!(arg.get_action(), ArgAction::Count) {
            word.push_str("...");
        }
        let repeated = matches!(arg.get_action(), ArgAction::Append);
        words.push(if arg.is_required_set() {
            word
        } else if repeated {
            format!("[{word}]...")
        } else {
            format!("[{word}]")
        });
    }
    words.extend(operands);
    // An unbreakable space inside each word: `[--listen ADDR]` stays on one line.
    words
        .iter()
        .map(|w| w.replace(' ', "\\ "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The arguments a reader is told of: not help, version or hidden ones.
fn shown(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|a| {
        !a.is_hide_set()
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// `--name VALUE` in roff, short form first where there is one.
fn flag(arg: &Arg) -> String {
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("\\fB\\-{short}\\fR"));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-")));
    }
    let mut word = names.join("|");
    if arg.get_action().takes_values() {
        let _ = write!(word, " \\fI{}\\fR", value_name(arg));
    }
    word
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or_else(|| arg.get_id().as_str().to_uppercase(), |n| n.to_string())
}

/// forkc's commands, each with its own options, so that every option is on the page.
fn commands(command: &Command) -> String {
    let mut text = String::from(".SH COMMANDS\n");
    for sub in command.get_subcommands() {
        let _ = writeln!(text, ".SS {}", sub.get_name());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            let _ = writeln!(text, "{}", roff_text(&about.to_string()));
        }
        for arg in shown(sub) {
            let _ = writeln!(
                text,
                ".TP\n{}",
                if arg.is_positional() {
                    format!("\\fI{}\\fR", value_name(arg))
                } else {
                    flag(arg)
                }
            );
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string());
            let mut help = roff_text(&help.unwrap_or_default());
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && !arg.is_positional() {
                let _ = write!(help, " [default: {}]", roff_text(&defaults.join(", ")));
            }
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() && arg.get_action().takes_values() {
                let _ = write!(help, " [possible values: {}]", values.join(", "));
            }
            let _ = writeln!(text, "{help}");
        }
    }
    text
}

/// What each example does, then its commands exactly as typed (no filling, no hyphenation).
fn examples_section(examples: &[(&str, &[&str])]) -> String {
    let mut text = String::from(".SH EXAMPLES\n");
    for (what, commands) in examples {
        let _ = writeln!(text, ".PP\n{}\n.PP\n.RS 4\n.nf", roff_text(what));
        for command in *commands {
            let _ = writeln!(text, "{}", roff_line(command));
        }
        text.push_str(".fi\n.RE\n");
    }
    text
}

/// Running text for roff: backslashes and hyphens escaped, no line starting a request.
fn roff_text(text: &str) -> String {
    text.lines().map(roff_line).collect::<Vec<_>>().join("\n")
}

fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
