//! The fault handler, for tests and the fork-versus-thread comparison only (hidden from
//! `--help`): echoes like `echo`, except that a DATA payload naming a fault commits it.
//!
//! | payload          | what the handler does                              |
//! |------------------|----------------------------------------------------|
//! | `panic`          | panics                                             |
//! | `abort`          | aborts the process (SIGABRT)                       |
//! | `stack-overflow` | recurses until the stack overflows (SIGSEGV)       |
//! | `spin`           | loops forever without reading or writing          |
//! | `spin-deaf`      | ignores SIGTERM, then loops forever                |
//! | `leak MIB`       | allocates and touches MIB mebibytes, never frees, answers `leaked MIB` |

use std::hint::black_box;

use super::framed::{self, Reply, Responder};
use super::{Handler, Outcome, ProtocolSettings};
use crate::conn::Connection;

pub struct Fault {
    pub settings: ProtocolSettings,
}

struct FaultResponder {
    leaked: Vec<Vec<u8>>,
}

impl Responder for FaultResponder {
    fn on_data(&mut self, payload: Vec<u8>) -> Reply {
        match payload.as_slice() {
            b"panic" => panic!("fault handler asked to panic"),
            b"abort" => std::process::abort(),
            b"stack-overflow" => {
                let depth = recurse(black_box(1));
                Reply::Data(depth.to_string().into_bytes())
            }
            b"spin" => spin(),
            b"spin-deaf" => {
                let _ = unsafe {
                    nix::sys::signal::signal(
                        nix::sys::signal::Signal::SIGTERM,
                        nix::sys::signal::SigHandler::SigIgn,
                    )
                };
                spin()
            }
            other => match other.strip_prefix(b"leak ") {
                Some(mib) => self.leak(mib),
                None => Reply::Data(payload),
            },
        }
    }
}

impl FaultResponder {
    fn leak(&mut self, mib: &[u8]) -> Reply {
        let Some(mib) = std::str::from_utf8(mib)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return Reply::Data(b"leak needs a number of MiB".to_vec());
        };
        // Touch every page so the memory is really resident, not just reserved.
        self.leaked.push(vec![0xa5; mib << 20]);
        Reply::Data(format!("leaked {mib}").into_bytes())
    }
}

fn spin() -> ! {
    loop {
        std::hint::spin_loop();
    }
}

fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 512]);
    if frame[0] == 0 {
        return 0;
    }
    recurse(black_box(depth + 1)) + frame[511]
}

impl Handler for Fault {
    fn serve(&self, conn: Connection) -> Outcome {
        framed::serve(
            conn,
            self.settings,
            &mut FaultResponder { leaked: Vec::new() },
        )
    }
}
