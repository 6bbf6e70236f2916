//! What both programs do with a command line that does not run them: `--help` and
//! `--version` printed whole, anything else one line naming the flag, and exit status 2.

use std::io::Write;

/// A command line that does not run the program.
#[derive(Debug)]
pub enum Stop {
    /// `--help` or `--version`: print this and exit 0.
    Print(String),
    /// A bad command line: this one line, then exit 2.
    Invalid(String),
}

impl Stop {
    /// Prints what is due and gives the exit status.
    pub fn finish(self, program: &str) -> std::process::ExitCode {
        match self {
            // Written, not print!ed: a stdout or stderr that is gone must not become a panic.
            Stop::Print(text) => {
                let _ = std::io::stdout().write_all(text.as_bytes());
                std::process::ExitCode::SUCCESS
            }
            Stop::Invalid(line) => {
                say_error(program, &line);
                std::process::ExitCode::from(2)
            }
        }
    }
}

/// `PROGRAM: line` on stderr, as an error: to the journal with its priority (`<3>`), so that
/// `journalctl -p err` shows why the program stopped. Written, not eprintln!ed: a stderr that
/// is gone must not turn the error into a panic.
pub fn say_error(program: &str, line: &str) {
    let priority = if forkd::stderr_is_journal() {
        "<3>"
    } else {
        ""
    };
    let _ = writeln!(std::io::stderr(), "{priority}{program}: {line}");
}

/// Help and version are printed whole; any other clap error becomes one line: its first
/// paragraph, which names the flag and the problem, and clap's tip if it has one ("a similar
/// argument exists: '--listen'"). The usage is dropped.
pub fn clap_error(e: clap::Error) -> Stop {
    use clap::error::ErrorKind;
    let text = e.render().to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Stop::Print(text),
        _ => {
            let paragraph: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let mut line = paragraph
                .join(" ")
                .trim_start_matches("error: ")
                .to_string();
            // The first tip is the one that helps ("a similar argument exists"); the others
            // explain clap's syntax.
            let tip = text.lines().find_map(|l| l.trim().strip_prefix("tip: "));
            if let Some(tip) = tip {
                line = format!("{line} ({tip})");
            }
            Stop::Invalid(line)
        }
    }
}

/// Lets every option's value start with a minus, so that `--grace -1ms` is refused by the
/// option's own parser ("invalid value '-1ms' for '--grace'") instead of being taken for an
/// unknown flag. Applies to subcommands too.
pub fn negative_values_named(command: clap::Command) -> clap::Command {
    let command = command.mut_args(|arg| {
        if arg.get_action().takes_values() && !arg.is_positional() {
            arg.allow_hyphen_values(true)
        } else {
            arg
        }
    });
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    names.into_iter().fold(command, |command, name| {
        command.mut_subcommand(name, negative_values_named)
    })
}

/// A whole number of the type `Self`, for [`whole`].
pub trait Whole:
    Copy + std::fmt::Display + std::str::FromStr + PartialOrd + Send + Sync + 'static
{
    const MAX: Self;
}

impl Whole for u32 {
    const MAX: Self = u32::MAX;
}

impl Whole for u64 {
    const MAX: Self = u64::MAX;
}

impl Whole for i32 {
    const MAX: Self = i32::MAX;
}

/// A parser for a whole number from `min` to `max` (`None`: as large as the type holds) that
/// says what is wanted in words: "must be at least 1", not "0 is not in 1..=4294967295".
pub fn whole<T: Whole>(min: T, max: Option<T>) -> impl clap::builder::TypedValueParser<Value = T> {
    let wanted = match max {
        Some(max) => format!("must be from {min} to {max}"),
        None => format!("must be at least {min}"),
    };
    move |s: &str| -> Result<T, String> {
        let digits = s.strip_prefix('-').unwrap_or(s);
        let Ok(n) = s.parse::<T>() else {
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                // A number, but too large (or too small) for the type.
                return Err(match max {
                    Some(_) => wanted.clone(),
                    None => format!("must be from {min} to {}", T::MAX),
                });
            }
            return Err(format!("'{s}' is not a whole number"));
        };
        if n < min || max.is_some_and(|max| n > max) {
            return Err(wanted.clone());
        }
        Ok(n)
    }
}

/// The examples as --help shows them after the options.
pub fn examples_text(examples: &[(&str, &[&str])]) -> String {
    let mut text = String::from("Examples:");
    for (what, commands) in examples {
        text.push_str(&format!("\n  {what}"));
        for command in *commands {
            text.push_str(&format!("\n    {command}"));
        }
    }
    text
}
