//! One admitted client connection, as the proxy sees it: its slot in the connection gate and its
//! place in `streamguard_connections_active`.
//!
//! The connection loop (`server`) admits the connection and holds it while it reads requests;
//! each request carries a clone in its context, and a stream that leaves its request for a task
//! of its own (see `stream`) takes that clone along. So the slot is given back when the socket
//! closes, whichever holder goes last, not when a request ends: a stream keeps counting as a
//! connection for as long as it lives.

use std::sync::Arc;

use prometheus::IntGauge;

use crate::policy::connections::ConnectionSlot;

/// Dropping the last clone frees the gate slot and lowers the gauge.
pub struct OpenConnection {
    _slot: ConnectionSlot,
    open: IntGauge,
}

impl OpenConnection {
    /// Counts `slot`'s connection in the `open` gauge until the last clone is dropped.
    pub fn new(slot: ConnectionSlot, open: &IntGauge) -> Arc<OpenConnection> {
        open.inc();
        Arc::new(OpenConnection {
            _slot: slot,
            open: open.clone(),
        })
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}
