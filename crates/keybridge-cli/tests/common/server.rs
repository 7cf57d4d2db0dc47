//! `keybridge server` as a child process, for tests of its command line.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::removal::Killed;

/// Spawns `command` (a `keybridge server … --ready-file READY` command
/// line, perhaps behind a wrapper such as `prlimit`) and waits until the
/// server writes READY; returns the process and the base URL it wrote.
pub fn until_ready(command: &mut Command, ready: &Path) -> (Killed, String) {
    let server = Killed(command.spawn().expect("start keybridge server"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = std::fs::read_to_string(ready).unwrap();
    (server, url.trim().to_owned())
}
