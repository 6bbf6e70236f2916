//! `--config FILE`: a TOML file whose keys are forkd's long flag names, turned into the
//! arguments they stand for. They go before the command line's own, and a flag the command line
//! gives drops the file's key altogether (a repeatable one too: `--listen` on the command line
//! replaces the file's `listen = [...]`), so the command line always wins.
//!
//! A value is what the flag takes, as TOML: a string, a number (`max-children = 64`,
//! `idle-timeout = 0.5`), `true` for a switch (`inetd = true`; `false` leaves it off), an array
//! for a repeatable flag (`listen = [":7000", "unix:/run/forkd.sock"]`), a count for `-v` and
//! `-q` (`quiet = 1`), and `program = ["cmd", "arg"]` for what follows `--`. Every value is
//! checked here by the flag's own parser, so a bad one is reported with the file, the line and
//! the key; how flags combine (`--penalty-max` needs `--penalty`) is checked with the command
//! line, as for flags.

use std::ffi::OsString;
use std::path::Path;

use clap::{Arg, ArgAction, Command};
use toml::Value;

/// The key for the program and its arguments (what follows `--` on a command line).
const PROGRAM: &str = "program";

/// Flags that make no sense in a file.
const NOT_IN_A_FILE: &[&str] = &["config", "check", "help", "version"];

/// One key of the file: its name and the arguments it stands for.
pub struct Setting {
    pub key: String,
    pub args: Vec<OsString>,
}

/// Reads `path` as a configuration for `command`, in the file's order.
pub fn read(path: &Path, command: &Command) -> Result<Vec<Setting>, String> {
    let place = path.display();
    let text = read_text(path).map_err(|e| format!("--config {place}: {e}"))?;
    let spanned = toml::de::DeTable::parse(&text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(&text, span.start));
        format!("{place}:{line}: {}", one_line(e.message()))
    })?;
    // The same text again, as plain values; the first parse gave each key its line.
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(&text, span.start));
        format!("{place}:{line}: {}", one_line(e.message()))
    })?;
    let mut settings = Vec::new();
    for (key, span) in spanned.get_ref().keys().map(|k| (k.get_ref(), k.span())) {
        let value = &table[key.as_ref()];
        let args = setting(key, value, command)
            .map_err(|why| format!("{place}:{}: {key}: {why}", line_of(&text, span.start)))?;
        settings.push(Setting {
            key: key.to_string(),
            args,
        });
    }
    Ok(settings)
}

/// The largest configuration file read: a few dozen keys fit in a few KiB.
const MAX_FILE: u64 = 1 << 20;

/// The file's text, if it is a regular file of at most [`MAX_FILE`] bytes: a FIFO or a device
/// (`/dev/zero`) would hold up a reload, which reads in the supervisor's loop.
fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if metadata.len() > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "{} bytes, over the {MAX_FILE} a configuration may have",
            metadata.len()
        )));
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text)?;
    Ok(text)
}

/// The arguments `key = value` stands for, each value checked by the flag's own parser.
fn setting(key: &str, value: &Value, command: &Command) -> Result<Vec<OsString>, String> {
    if key == PROGRAM {
        let argv = strings(value)?;
        if argv.is_empty() {
            return Err("an empty program: give [\"/path/to/program\", \"arg\", ...]".into());
        }
        return Ok(argv.into_iter().map(OsString::from).collect());
    }
    if NOT_IN_A_FILE.contains(&key) {
        return Err(format!("--{key} is for the command line, not a file"));
    }
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(key))
        .ok_or_else(|| "not a setting of forkd (the keys are its long flag names)".to_string())?;
    let flag = format!("--{key}");
    match arg.get_action() {
        ArgAction::SetTrue => Ok(match boolean(value)? {
            true => vec![flag.into()],
            false => Vec::new(),
        }),
        ArgAction::Count => match value {
            Value::Integer(n @ 0..=3) => Ok(vec![flag.into(); *n as usize]),
            _ => Err("expects a count from 0 to 3".into()),
        },
        ArgAction::Append => {
            let values = match value {
                Value::Array(_) => strings(value)?,
                scalar => vec![text(scalar)?],
            };
            values.iter().map(|v| checked(arg, &flag, v)).collect()
        }
        _ => {
            // A flag whose value may be left out (`--sandbox`): `true` stands for it alone.
            let optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
            match value {
                Value::Boolean(true) if optional => Ok(vec![flag.into()]),
                Value::Boolean(false) if optional => Ok(Vec::new()),
                Value::Array(_) => Err("takes one value, not an array".into()),
                scalar => Ok(vec![checked(arg, &flag, &text(scalar)?)?]),
            }
        }
    }
}

/// `--flag=value`, once the flag's parser has taken the value.
fn checked(arg: &Arg, flag: &str, value: &str) -> Result<OsString, String> {
    if let Some(possible) = possible_values(arg)
        && !possible.iter().any(|p| p == value)
    {
        return Err(format!("'{value}' is not one of {}", possible.join(", ")));
    }
    // The flag alone, with its parser and none of its ties to other flags, which are judged
    // with the whole command line.
    let alone = Arg::new(arg.get_id().clone())
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Set)
        .allow_hyphen_values(true);
    Command::new("forkd")
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(alone)
        .try_get_matches_from(["forkd", value])
        .map_err(|e| clap_reason(&e))?;
    Ok(format!("{flag}={value}").into())
}

/// The names an enumerated flag (`--log`, `--handler`) takes, if it is one.
fn possible_values(arg: &Arg) -> Option<Vec<String>> {
    let values = arg.get_possible_values();
    (!values.is_empty()).then(|| values.iter().map(|v| v.get_name().to_string()).collect())
}

/// What the flag's parser says is wrong with a value, or else clap's first paragraph.
fn clap_reason(e: &clap::Error) -> String {
    if let Some(why) = std::error::Error::source(e) {
        return why.to_string();
    }
    let text = e.render().to_string();
    let paragraph: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    paragraph
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

fn boolean(value: &Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| "expects true or false".to_string())
}

/// A scalar as the text a command line would carry.
fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(n) => Ok(n.to_string()),
        // Debug keeps the point (8.0, 1e300): an integer flag refuses it, as it should.
        Value::Float(f) => Ok(format!("{f:?}")),
        Value::Boolean(_) => Err("expects a value, not true or false".into()),
        _ => Err("expects a string or a number".into()),
    }
}

/// An array of scalars, each as text.
fn strings(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(items) => items.iter().map(text).collect(),
        _ => Err("expects an array, as in [\"a\", \"b\"]".into()),
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// A message on one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
