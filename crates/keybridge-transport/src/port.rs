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

/// A loopback TCP port in [`LISTEN_PORTS`] that was free a moment ago, for a
/// listener another process binds. Between this check and that bind anyone
/// may take it; when this process binds it itself, use [`bind_in_range`],
/// which has no such window.
pub fn listen_port() -> std::io::Result<u16> {
    bind_in_range(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port))).map(|(port, _)| port)
}

/// Runs `bind` on random ports of [`LISTEN_PORTS`] until one is not in use,
/// and returns that port with what `bind` made of it. Any error other than
/// "address in use" ends the search: it would not go away on another port.
pub fn bind_in_range<T>(
    mut bind: impl FnMut(u16) -> std::io::Result<T>,
) -> std::io::Result<(u16, T)> {
    let mut rng = rand::thread_rng();
    for _ in 0..ATTEMPTS {
        let port = rng.gen_range(LISTEN_PORTS);
        match bind(port) {
            Ok(bound) => return Ok((port, bound)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
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

    #[test]
    fn binding_in_range_moves_on_from_a_port_in_use() {
        let (taken, _held) =
            bind_in_range(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port))).unwrap();
        let mut tried = Vec::new();
        let (port, _listener) = bind_in_range(|port| {
            tried.push(port);
            // The first pick is answered with the port already held.
            let port = if tried.len() == 1 { taken } else { port };
            TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        })
        .unwrap();
        assert_eq!(tried.len(), 2, "one retry after the port in use");
        assert_ne!(port, taken);
        assert!(LISTEN_PORTS.contains(&port));
    }

    #[test]
    fn binding_in_range_stops_at_other_errors() {
        let mut calls = 0;
        let err = bind_in_range(|_| -> std::io::Result<()> {
            calls += 1;
            Err(std::io::ErrorKind::PermissionDenied.into())
        })
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(calls, 1);
    }
}
