//! The echo handler, forkd's default: DATA comes back as the same DATA (PING/PONG is answered
//! by the protocol session itself).

use super::framed::{self, Reply, Responder};
use super::{Handler, Outcome, ProtocolSettings};
use crate::conn::Connection;

pub struct Echo {
    pub settings: ProtocolSettings,
}

struct EchoResponder;

impl Responder for EchoResponder {
    fn on_data(&mut self, payload: Vec<u8>) -> Reply {
        Reply::Data(payload)
    }
}

impl Handler for Echo {
    fn serve(&self, conn: Connection) -> Outcome {
        framed::serve(conn, self.settings, &mut EchoResponder)
    }
}
