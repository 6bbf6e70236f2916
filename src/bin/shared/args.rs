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

/// Help and version are printed whole; any other clap error becomes one line, its first
/// paragraph, which names the flag and the problem (usage and tips are dropped).
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
            Stop::Invalid(
                paragraph
                    .join(" ")
                    .trim_start_matches("error: ")
                    .to_string(),
            )
        }
    }
}
