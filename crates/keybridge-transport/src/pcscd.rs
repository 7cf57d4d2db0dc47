//! pcscd and vsmartcard's vpcd on this machine: is the stack there, start the
//! daemon when it is not running, and take turns using it.
//!
//! pcscd is one daemon per machine and vpcd's ports are fixed (35963 for
//! "Virtual PCD 00 00", 35964 for "Virtual PCD 00 01"), so two programs that
//! attach a virtual card at the same time would see each other's card.
//! [`VpcdLock`] makes them take turns: it holds a loopback TCP port, which the
//! kernel frees when the holder exits however it exits (no stale lock files).

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// pcscd's client socket (pcsc-lite's default).
pub const SOCKET_PATH: &str = "/run/pcscd/pcscd.comm";
/// The vpcd driver and its reader configuration (Debian's vsmartcard-vpcd).
pub const VPCD_DRIVER_PATH: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
pub const VPCD_CONFIG_PATH: &str = "/etc/reader.conf.d/vpcd";
/// Where vpcd waits for a card: the first virtual reader, "Virtual PCD 00 00".
pub const VPCD_ADDR: &str = "127.0.0.1:35963";
pub const VPCD_READER_NAME: &str = "Virtual PCD 00 00";
/// The port [`VpcdLock`] holds (next to vpcd's, unused by it).
pub const LOCK_PORT: u16 = 35960;
/// What to install when something is missing (Debian/Ubuntu package names).
pub const INSTALL_HINT: &str =
    "apt-get install pcscd vsmartcard-vpcd opensc pcsc-tools yubico-piv-tool libpcsclite-dev";
/// How long a started pcscd may take to open its socket.
const START_WAIT_MS: u64 = 5_000;

/// Why the PC/SC stack cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PcscdError {
    #[error("{what} is not installed ({path}); install it with: {INSTALL_HINT}")]
    Missing { what: &'static str, path: String },
    #[error("pcscd is not running and could not be started: {0}")]
    Start(io::Error),
    #[error("pcscd started but did not open {SOCKET_PATH} within {START_WAIT_MS} ms")]
    NoSocket,
    #[error("waiting for the vpcd lock: {0}")]
    Lock(io::Error),
}

/// Whether pcscd answers on its socket now.
pub fn is_running() -> bool {
    std::os::unix::net::UnixStream::connect(SOCKET_PATH).is_ok()
}

/// The pcscd binary, if installed.
pub fn pcscd_binary() -> Option<PathBuf> {
    ["/usr/sbin/pcscd", "/usr/local/sbin/pcscd", "/sbin/pcscd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Checks that pcscd and the vpcd driver are installed.
pub fn check_installed() -> Result<(), PcscdError> {
    if pcscd_binary().is_none() && !is_running() {
        return Err(PcscdError::Missing {
            what: "pcscd",
            path: "/usr/sbin/pcscd".into(),
        });
    }
    for (what, path) in [
        ("vsmartcard-vpcd (driver)", VPCD_DRIVER_PATH),
        ("vsmartcard-vpcd (reader configuration)", VPCD_CONFIG_PATH),
    ] {
        if !Path::new(path).exists() {
            return Err(PcscdError::Missing {
                what,
                path: path.into(),
            });
        }
    }
    Ok(())
}

/// pcscd, running: either it already was, or this value started it and
/// stops it (by its pid) when dropped.
#[derive(Debug)]
pub struct Pcscd {
    child: Option<Child>,
}

impl Pcscd {
    /// Makes sure pcscd runs, starting `pcscd -f -a` (foreground, APDU log)
    /// when it does not; its output goes to `log` when given.
    pub fn ensure(log: Option<&Path>) -> Result<Pcscd, PcscdError> {
        check_installed()?;
        if is_running() {
            return Ok(Pcscd { child: None });
        }
        let binary = pcscd_binary().ok_or(PcscdError::Missing {
            what: "pcscd",
            path: "/usr/sbin/pcscd".into(),
        })?;
        let mut command = Command::new(binary);
        // -d with -a: pcscd logs APDUs at debug level only.
        command.args(["-f", "-d", "-a"]).stdin(Stdio::null());
        match log {
            Some(path) => {
                let file = std::fs::File::create(path).map_err(PcscdError::Start)?;
                let err = file.try_clone().map_err(PcscdError::Start)?;
                command.stdout(file).stderr(err);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let mut child = command.spawn().map_err(PcscdError::Start)?;
        let deadline = Instant::now() + Duration::from_millis(START_WAIT_MS);
        while !is_running() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(PcscdError::Start(io::Error::other(format!(
                    "pcscd exited with {status} (it needs root to create /run/pcscd)"
                ))));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PcscdError::NoSocket);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Pcscd { child: Some(child) })
    }

    /// Whether this value started the daemon (and will stop it).
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    /// The started daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the daemon if this value started it, then starts it again: what
    /// a reboot or a package upgrade does to a card that stays attached.
    pub fn restart(&mut self, log: Option<&Path>) -> Result<(), PcscdError> {
        self.stop();
        let fresh = Pcscd::ensure(log)?;
        *self = fresh;
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Exclusive use of vpcd's ports on this machine, held until dropped.
#[derive(Debug)]
pub struct VpcdLock {
    _listener: TcpListener,
}

impl VpcdLock {
    /// Waits up to `wait` for the lock.
    pub fn acquire(wait: Duration) -> Result<VpcdLock, PcscdError> {
        let deadline = Instant::now() + wait;
        loop {
            match TcpListener::bind(("127.0.0.1", LOCK_PORT)) {
                Ok(listener) => {
                    return Ok(VpcdLock {
                        _listener: listener,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(PcscdError::Lock(e)),
            }
        }
    }
}
