//! The echo handler, forkd's default: DATA comes back as the same DATA (PING/PONG is answered
//! by the protocol session itself).

use super::{FramedHandler, Reply};

pub(crate) struct Echo;

impl FramedHandler for Echo {
    fn request(&mut self, payload: &[u8], reply: Reply<'_>) {
        reply.data(payload);
    }
}
