//! Free loopback ports for control planes, Envoys, service listeners and backends.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use anyhow::bail;

/// Ports are drawn below Linux's ephemeral range (32768-60999), so an outgoing connection of any
/// process cannot grab a port between the moment it is chosen and the moment its user binds it.
const RANGE: std::ops::Range<u16> = 20000..32000;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port that is free on 127.0.0.1 now and was not handed out before in this process (tests in
/// one binary run in parallel, each with its own Envoy binding service ports on 127.0.0.1).
pub fn free_port() -> anyhow::Result<u16> {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let used = guard.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = rand::random_range(RANGE);
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            used.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port found in {RANGE:?} on 127.0.0.1")
}
