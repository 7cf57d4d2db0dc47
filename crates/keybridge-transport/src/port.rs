//! A loopback port for a listener that another part binds next: the vpcd
//! reader a card connects to, the BLE simulator's socket.
//!
//! Binding port 0 and dropping the listener to learn a free port is a race:
//! Linux hands the same port to the next bind to port 0, so a test running
//! beside it got "our" port for its own reader and the two crossed (seen in
//! CI). Ports picked here lie below Linux's default ephemeral range
//! (32768–60999), which neither a bind to port 0 nor an outgoing
//! connection's source port is taken from.

use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;

use rand::Rng;

/// Where ports are picked: below the ephemeral range, above the well-known
/// and commonly registered ones.
pub const LISTEN_PORTS: Range<u16> = 20_000..32_000;
/// Random picks tried before giving up.
const ATTEMPTS: usize = 64;

/// A loopback TCP port in [`LISTEN_PORTS`] that was free a moment ago.
pub fn listen_port() -> std::io::Result<u16> {
    let mut rng = rand::thread_rng();
    for _ in 0..ATTEMPTS {
        let port = rng.gen_range(LISTEN_PORTS);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {LISTEN_PORTS:?} after {ATTEMPTS} tries"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_a_bindable_port_below_the_ephemeral_range() {
        let port = listen_port().unwrap();
        assert!(LISTEN_PORTS.contains(&port));
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    }
}
