//! What both programs do with a command line that does not run them: `--help` and
//! `--version` printed whole, anything else one line naming the flag, and exit status 2.

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
            Stop::Print(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Stop::Invalid(line) => {
                eprintln!("{program}: {line}");
                std::process::ExitCode::from(2)
            }
        }
    }
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
