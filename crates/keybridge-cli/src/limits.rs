//! The server's file descriptor limit.
//!
//! Every enrolled phone keeps a WebSocket open to the server, and every
//! socket is a file descriptor. The soft limit a process usually starts with
//! (1,024 under systemd and most shells) would cap a server at about a
//! thousand phones, terminals and browsers at once, while the hard limit is
//! far higher (524,288 under systemd). As Go's runtime and nginx's
//! `worker_rlimit_nofile` do, the server raises its soft limit to the hard
//! one when it starts; past that, `serve.rs` stops accepting until some
//! connections close, and its read timeout makes sure quiet ones do.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns the soft limit
/// now in force (`None`: unlimited). A failure leaves the limit as it was:
/// it only means fewer connections at once.
pub fn raise_descriptor_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum) {
        if current < maximum {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => return Some(maximum),
                Err(e) => {
                    tracing::warn!(error = %e, current, maximum, "cannot raise the file descriptor limit")
                }
            }
        }
    }
    limit.current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let before = getrlimit(Resource::Nofile);
        let now = raise_descriptor_limit();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(now, after.current);
        assert_eq!(after.maximum, before.maximum);
        if before.maximum.is_some() {
            assert_eq!(after.current, before.maximum);
        }
    }
}
