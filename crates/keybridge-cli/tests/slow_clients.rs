//! A `keybridge server` whose file descriptors run out because clients
//! connected and went quiet. Each such socket is one descriptor; once none
//! are left the server cannot accept anyone, terminal or phone. The server
//! closes a connection that sends no request within `--read-timeout-s`
//! (`keybridge-server/src/serve.rs`), so it takes connections again soon
//! after. Before that, the quiet sockets stayed open for good and the server
//! answered nobody until it was restarted.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::removal::Killed;
use common::server;

/// Starts `keybridge server` on an ephemeral port, through `prlimit` with
/// `nofile` (`soft:hard`) if given; returns it and its address.
fn start_server(dir: &Path, nofile: Option<&str>) -> (Killed, String) {
    let ready = dir.join("ready");
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut command = match nofile {
        // prlimit sets the limit on itself and then runs the server in its
        // place: same process.
        Some(limit) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={limit}"))
                .arg(env!("CARGO_BIN_EXE_keybridge"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_keybridge")),
    };
    command
        .args(["server", "--listen", "127.0.0.1:0", "--read-timeout-s", "1"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("KEYBRIDGE_DATABASE_URL")
        .env("KEYBRIDGE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let (server, url) = server::until_ready(&mut command, &ready);
    (server, url.trim_start_matches("http://").to_owned())
}

/// `GET /healthz` on a new connection; the answer's status line, or why
/// there was none within `wait`.
fn health(addr: &str, wait: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(wait)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: kb\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("no answer within {wait:?}: {e}"))?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn quiet_connections_that_use_up_the_descriptors_are_closed_and_the_server_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = start_server(dir.path(), None);
    let pid = server.0.id();

    // Leave the server 16 descriptors more than it holds now.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 16;
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --nofile={limit}");

    // 64 clients connect and say nothing: the first few take the free
    // descriptors, the rest wait in the listen queue.
    let quiet: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Within a few read timeouts every quiet socket is closed and a new
    // client is answered.
    let answer = health(&addr, Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert_eq!(answer.as_deref(), Ok("HTTP/1.1 200 OK"), "{log}");
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "server exited:\n{log}"
    );
    // Out of descriptors is said once per spell, not at every retry.
    assert!(log.contains("cannot accept connections; retrying"), "{log}");
    assert!(log.contains("accepting connections again"), "{log}");
    let warnings = log.matches("cannot accept connections").count();
    assert!(warnings <= 5, "{warnings} warnings:\n{log}");
    drop(quiet);
}

/// The server starts with its soft descriptor limit raised to the hard one:
/// each connected phone holds a socket, and the usual soft limit of 1,024
/// would cap it near a thousand.
#[test]
fn the_server_raises_its_descriptor_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _addr) = start_server(dir.path(), Some("256:4096"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.0.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    assert_eq!(fields[3..5], ["4096", "4096"], "{open_files}");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.contains("file descriptors") && log.contains("4096"),
        "{log}"
    );
}
