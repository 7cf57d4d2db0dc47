//! The real PC/SC stack for tests: pcscd (started here when it is not
//! running, stopped again after), vsmartcard's vpcd, and `keybridge card`
//! attached to it as a process. One test at a time on this machine holds the
//! vpcd lock (pcscd is one daemon with fixed vpcd ports).
//!
//! When a tool is missing: under CI (`CI=true`) the test fails; elsewhere it
//! says so loudly on stderr and passes without running.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod removal;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use keybridge_transport::pcsc::PcscReader;
use keybridge_transport::pcscd::{self, Pcscd, VpcdLock};

pub const PKCS11_MODULE: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";
pub const CARD_PIN: &str = "123456";
pub const PUK: &str = "12345678";

/// The tools the PC/SC tests run.
const TOOLS: [&str; 4] = ["opensc-tool", "pkcs11-tool", "yubico-piv-tool", "openssl"];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// `Some(())` when the stack is installed; `None` (after a loud message)
/// when it is not and this is not CI; a panic when it is not and this is CI.
pub fn require_stack(test: &str) -> Option<()> {
    let mut missing: Vec<String> = TOOLS
        .iter()
        .filter(|t| !on_path(t))
        .map(|t| t.to_string())
        .collect();
    if let Err(e) = pcscd::check_installed() {
        missing.push(e.to_string());
    }
    if !Path::new(PKCS11_MODULE).exists() {
        missing.push(PKCS11_MODULE.into());
    }
    if missing.is_empty() {
        return Some(());
    }
    let message = format!(
        "{test}: the PC/SC stack is missing: {}. Install: {}",
        missing.join(", "),
        pcscd::INSTALL_HINT
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!!!!! SKIPPED (not CI) !!!!!!!!\n{message}\n");
    None
}

/// pcscd, the vpcd lock, and one `keybridge card` attached to vpcd.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    card: Option<Child>,
    profile: String,
    pub pcscd: Pcscd,
    _lock: VpcdLock,
}

impl Stack {
    /// Starts pcscd if needed and a fresh card (`--init`, PIN [`CARD_PIN`]).
    pub fn start(profile: &str) -> Stack {
        let lock = VpcdLock::acquire(Duration::from_secs(600)).expect("vpcd lock");
        let dir = tempfile::tempdir().unwrap();
        let pcscd = Pcscd::ensure(Some(&dir.path().join("pcscd.log"))).expect("pcscd");
        let state = dir.path().join("card.json");
        let mut stack = Stack {
            state,
            card: None,
            profile: profile.to_owned(),
            pcscd,
            _lock: lock,
            dir,
        };
        stack.start_card();
        stack
    }

    pub fn start_card(&mut self) {
        // A card another test just stopped may still be listed: wait it out.
        PcscReader::new(None)
            .wait_until_empty(pcscd::VPCD_READER_NAME, Duration::from_secs(10))
            .expect("the virtual reader empties");
        let log = std::fs::File::create(self.dir.path().join("card.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .args([
                "card",
                "--init",
                "--policy",
                "approve",
                "--profile",
                &self.profile,
            ])
            .arg("--state")
            .arg(&self.state)
            .args(["--link", &format!("vpcd={}", pcscd::VPCD_ADDR)])
            .env("KEYBRIDGE_CARD_PIN", CARD_PIN)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keybridge card");
        self.card = Some(child);
        self.wait_for_card();
    }

    pub fn stop_card(&mut self) {
        if let Some(mut child) = self.card.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until pcscd reports the card in the first virtual reader.
    pub fn wait_for_card(&self) {
        if let Err(e) = self.card_appears(Duration::from_secs(20)) {
            panic!("the card did not appear in pcscd: {e}\n{}", self.logs());
        }
    }

    /// Whether the card shows up in pcscd's vpcd reader within `wait`.
    pub fn card_appears(&self, wait: Duration) -> Result<(), String> {
        let mut reader = PcscReader::new(Some(pcscd::VPCD_READER_NAME));
        reader.wait_for_card(wait).map_err(|e| e.to_string())
    }

    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let pcscd = read("pcscd.log");
        let tail: Vec<&str> = pcscd.lines().rev().take(60).collect();
        format!(
            "--- card.log\n{}\n--- pcscd.log (last 60 lines, if started here)\n{}",
            read("card.log"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a tool in the temp dir; returns stdout + stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let output: Output = Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// Runs a tool that must succeed and print `expect`.
    pub fn ok(&self, program: &str, args: &[&str], expect: &str) -> String {
        let (ok, text) = self.run(program, args);
        assert!(
            ok && text.contains(expect),
            "{program} {args:?} (exit ok: {ok}) should print {expect:?}:\n{text}\n{}",
            self.logs()
        );
        text
    }

    /// Runs a tool that must fail and print `expect`.
    pub fn fails(&self, program: &str, args: &[&str], expect: &str) -> String {
        let (ok, text) = self.run(program, args);
        assert!(
            !ok && text.contains(expect),
            "{program} {args:?} (exit ok: {ok}) should fail with {expect:?}:\n{text}\n{}",
            self.logs()
        );
        text
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_card();
    }
}
