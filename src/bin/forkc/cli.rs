//! forkc's command line: the clap definitions, shared by the forkc binary and the man-page
//! and completion generator.

use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use forkd::Addr;
use forkd::config::{parse_bytes, parse_secs};
use forkd::frame::DEFAULT_MAX_FRAME;

#[derive(Parser, Debug)]
#[command(
    name = "forkc",
    version,
    about = "Client for forkd's protocol v1: send DATA frames and print the replies, or ping."
)]
pub struct Cli {
    /// Server address (required): 127.0.0.1:7000, [::1]:7000, :7000 (this machine) or
    /// unix:/path.
    #[arg(long, value_name = "ADDR", global = true)]
    pub connect: Option<Addr>,

    /// Give up on a connect, read or write that takes longer than this.
    #[arg(long, value_name = "DURATION", global = true, default_value = "10", value_parser = parse_secs)]
    pub timeout: Duration,

    /// Largest reply payload accepted.
    #[arg(long, value_name = "BYTES", global = true, default_value_t = DEFAULT_MAX_FRAME,
          value_parser = parse_bytes)]
    pub max_frame: u32,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send DATA frames, all at once (pipelined), and print the replies in order: one frame
    /// per PAYLOAD argument (`-`: one per line of stdin), then one per --file; each reply on
    /// its own line, or as it is with --raw.
    Send {
        /// The payload of one DATA frame; `-` stands for the lines of stdin, a frame each.
        #[arg(value_name = "PAYLOAD", required_unless_present = "files")]
        payloads: Vec<String>,
        /// Also send the whole content of PATH as one frame, byte for byte (`-`: all of
        /// stdin); repeatable.
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<std::path::PathBuf>,
        /// Write each reply's payload exactly as received, with no newline after it: for
        /// binary replies, or one reply to a file.
        #[arg(long)]
        raw: bool,
    },
    /// Load the server and measure it: requests/s, connections/s, MB/s, latency percentiles,
    /// errors by kind. Every reply is checked byte for byte. Bounded by --requests or
    /// --duration (whichever ends first; 10000 requests when neither is given).
    Bench {
        /// churn: connect, one request, close; persistent: requests back to back on each
        /// connection; pipelined: --depth requests per write on each connection; hold: idle
        /// connections for --duration.
        #[arg(long, value_enum, default_value = "persistent")]
        workload: forkd::client::bench::Workload,
        /// Concurrent connections (one client thread each).
        #[arg(long, value_name = "C", default_value_t = 4,
              value_parser = super::args::whole(1u64, Some(100_000)))]
        connections: u64,
        /// Total requests over all connections.
        #[arg(long, value_name = "N", value_parser = super::args::whole(1u64, None))]
        requests: Option<u64>,
        /// Stop after this long.
        #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
        duration: Option<Duration>,
        /// Payload bytes per request (at least 8: a sequence number).
        #[arg(long, value_name = "BYTES", default_value = "64", value_parser = parse_bytes)]
        size: u32,
        /// pipelined: requests per write (at most two writes' worth unanswered).
        #[arg(long, value_name = "K", default_value_t = 16,
              value_parser = super::args::whole(1u64, Some(100_000)))]
        depth: u64,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Send PING frames one at a time and print each round-trip time.
    Ping {
        /// How many pings.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = super::args::whole(1u64, None))]
        count: u64,
    },
}

/// The clap command, as parsed and for man pages and completions (examples/package-docs.rs).
/// What each example does, and the commands: in --help, and as forkc(1)'s EXAMPLES.
pub const EXAMPLES: &[(&str, &[&str])] = &[
    (
        "Two frames, each reply on its own line:",
        &["forkc --connect 127.0.0.1:7000 send hello world"],
    ),
    (
        "A frame per line of stdin, over a Unix socket:",
        &["printf 'a\\nb\\n' | forkc --connect unix:/run/forkd/forkd.sock send -"],
    ),
    (
        "A file as one frame, the reply byte for byte:",
        &["forkc --connect 127.0.0.1:7000 send --file request.bin --raw > reply.bin"],
    ),
    (
        "Round trips, and a load test of 10 seconds:",
        &[
            "forkc --connect [::1]:7000 ping --count 5",
            "forkc --connect 127.0.0.1:7000 bench --workload churn --connections 4 --duration 10",
        ],
    ),
];

pub fn command() -> clap::Command {
    let after = super::args::examples_text(EXAMPLES);
    super::args::negative_values_named(Cli::command().after_help(after))
}
