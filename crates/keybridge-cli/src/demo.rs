//! `keybridge demo`: every role as its own process on loopback, one payment
//! end to end, each step printed with its time.
//!
//! The demo process plays the operator (admin API) and starts `keybridge
//! server`, `keybridge card`, `keybridge relay` and `keybridge pay` as child
//! processes of the same binary, forwarding their output with a time stamp. A
//! scenario shapes one of them (the card declines, the phone has the wrong PIN,
//! the relay tampers, the phone is offline, the payer is short of money), and
//! the demo checks the outcome and that no money moved unless settled.
//!
//! `--transport vpcd` (default) links card and phone directly: the phone
//! listens as a vpcd reader and the card connects to it. `--transport pcsc`
//! puts the real PC/SC stack between them: the card attaches to pcscd's vpcd
//! and the phone reaches it through pcscd (started here, and stopped after,
//! when it is not running). `--applet piv` enrols and pays with the card's
//! PIV applet (slot 9C) instead of the transaction applet.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use keybridge_proto::api::SignatureMethod;
use keybridge_proto::api::{CreateAccount, Reason, TransactionStatus};
use keybridge_proto::{AccountId, Currency, Money};
use keybridge_relay::{CardLink, CardLinkSpec};
use keybridge_transport::pcscd::{self, Pcscd, VpcdLock};

use crate::roles::AppletArg;
use keybridge_terminal::Client;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// The holder approves on the card: settled.
    Happy,
    /// The holder declines on the card: rejected (declined).
    Decline,
    /// The phone sends a wrong PIN: rejected (wrong_pin).
    WrongPin,
    /// The relay raises the amount before the card signs: rejected (bad_signature).
    Tamper,
    /// The relay swaps the payee before the card signs: rejected (bad_signature).
    TamperPayee,
    /// The phone is offline until the request expires: expired.
    Expired,
    /// The payer's balance is too small: failed (insufficient_funds).
    InsufficientFunds,
}

/// How the card confirms in the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// The transaction applet: ECDSA over payload ‖ counter, certificate from the CA (CSR).
    Applet,
    /// OCRA (RFC 6287) over the payload's SHA-256, secret from an otpauth URI.
    Ocra,
}

/// The suite the demo provisions: 8 digits of HMAC-SHA256 over counter,
/// the payload's SHA-256 and a 30-second time step.
pub const DEMO_OCRA_SUITE: &str = "OCRA-1:HOTP-SHA256-8:C-QH64-T30S";

impl Scenario {
    fn expected(self, method: Method) -> (TransactionStatus, Option<Reason>) {
        match self {
            Scenario::Happy => (TransactionStatus::Settled, None),
            Scenario::Tamper | Scenario::TamperPayee if method == Method::Ocra => {
                (TransactionStatus::Rejected, Some(Reason::OcraMismatch))
            }
            Scenario::Decline => (TransactionStatus::Rejected, Some(Reason::Declined)),
            Scenario::WrongPin => (TransactionStatus::Rejected, Some(Reason::WrongPin)),
            Scenario::Tamper | Scenario::TamperPayee => {
                (TransactionStatus::Rejected, Some(Reason::BadSignature))
            }
            Scenario::Expired => (TransactionStatus::Expired, Some(Reason::Expired)),
            Scenario::InsufficientFunds => {
                (TransactionStatus::Failed, Some(Reason::InsufficientFunds))
            }
        }
    }
}

/// How the phone reaches the card in the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// The phone is the card's vpcd reader over loopback (a wired reader; no
    /// system packages needed).
    Vpcd,
    /// The card attaches to pcscd's vpcd; the phone uses PC/SC.
    Pcsc,
    /// The simulated BLE link, with the secure channel (KB-SC1). The card is
    /// enrolled over vpcd first (enrolment needs no radio), then moves to BLE.
    BleSim,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, value_enum, default_value_t = Scenario::Happy)]
    pub scenario: Scenario,
    #[arg(long, value_enum, default_value_t = Method::Applet)]
    pub method: Method,
    /// With `--transport ble-sim`: the phone's ATT MTU, latency, loss and seed.
    #[command(flatten)]
    pub ble: crate::roles::BleSimArgs,
    /// Keep the temp directory (database, card state) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// How the phone reaches the card: directly over vpcd, or through pcscd.
    #[arg(long, value_enum, default_value_t = Transport::Vpcd)]
    pub transport: Transport,
    /// Which applet signs: the transaction applet or PIV slot 9C.
    #[arg(long, value_enum, default_value_t = AppletArg::Keybridge)]
    pub applet: AppletArg,
}

/// Waits this long for another program to finish with pcscd's vpcd ports.
const VPCD_LOCK_WAIT_S: u64 = 300;

const CARD_PIN: &str = "123456";
const PAYER: &str = "alice";
const PAYEE: &str = "bookshop";

/// Prints lines with the time since the demo started.
#[derive(Clone)]
struct Log {
    start: Instant,
    out: Arc<Mutex<()>>,
}

impl Log {
    fn line(&self, role: &str, text: &str) {
        let _guard = self.out.lock();
        let ms = self.start.elapsed().as_millis();
        println!("{ms:>6} ms  {role:<8} {text}");
    }
}

/// Children are killed when the demo ends, however it ends.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        // Last started first: the phone and card go before the server they talk to.
        for (_, child) in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Children {
    /// Ends one role's process (the card taken away from the reader).
    fn stop(&mut self, role: &str) {
        if let Some(i) = self.0.iter().position(|(r, _)| r == role) {
            let (_, mut child) = self.0.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self, log: &Log, role: &str, mut command: Command) -> anyhow::Result<()> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("KEYBRIDGE_LOG_STYLE", "demo");
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {role}"))?;
        forward(log, role, child.stdout.take());
        forward(log, role, child.stderr.take());
        self.0.push((role.to_owned(), child));
        Ok(())
    }
}

fn forward(log: &Log, role: &str, stream: Option<impl std::io::Read + Send + 'static>) {
    let Some(stream) = stream else { return };
    let log = log.clone();
    let role = role.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let text = line
                .strip_prefix("[phone] ")
                .or_else(|| line.strip_prefix("[card] "))
                .unwrap_or(&line);
            log.line(&role, text);
        }
    });
}

fn free_port() -> anyhow::Result<u16> {
    Ok(keybridge_transport::port::listen_port()?)
}

fn wait_for_file(path: &Path, wait: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub async fn run(args: DemoArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            println!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(args: DemoArgs) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("locating the keybridge binary")?;
    let temp = tempfile::Builder::new()
        .prefix("keybridge-demo-")
        .tempdir()?;
    let dir: PathBuf = temp.path().to_owned();
    let log = Log {
        start: Instant::now(),
        out: Arc::new(Mutex::new(())),
    };
    let mut children = Children(Vec::new());
    let scenario = args.scenario;
    let method = args.applet.method();
    log.line(
        "demo",
        &format!(
            "scenario {scenario:?}, method {:?}, transport {:?}, applet {}, working directory {}",
            args.method,
            args.transport,
            method.as_str(),
            dir.display()
        ),
    );
    // Declared before the children: dropped after them, so the card and
    // phone are gone before pcscd stops.
    let mut _pcsc_stack: Option<(VpcdLock, Pcscd)> = None;
    if args.transport == Transport::Pcsc {
        if let Err(e) = pcscd::check_installed() {
            bail!(
                "--transport pcsc needs pcscd and vsmartcard's vpcd: {e}\n\
                 (on Debian/Ubuntu, as root: {})",
                pcscd::INSTALL_HINT
            );
        }
        let lock = VpcdLock::acquire(Duration::from_secs(VPCD_LOCK_WAIT_S))
            .context("waiting for another program using pcscd's vpcd")?;
        let daemon = Pcscd::ensure(Some(&dir.join("pcscd.log")))
            .context("pcscd is not running and could not be started (start it as root: pcscd)")?;
        match daemon.pid() {
            Some(pid) => log.line(
                "demo",
                &format!("started pcscd (pid {pid}); it stops with the demo"),
            ),
            None => log.line("demo", "using the pcscd already running"),
        }
        // A card another program just stopped may still be listed: wait it out.
        keybridge_transport::pcsc::PcscReader::new(None)
            .wait_until_empty(pcscd::VPCD_READER_NAME, Duration::from_secs(10))
            .context("the virtual reader still holds another card")?;
        _pcsc_stack = Some((lock, daemon));
    }

    // Server.
    let admin_token = hex::encode(rand::random::<[u8; 24]>());
    let ready = dir.join("server.ready");
    let mut server = Command::new(&exe);
    server
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("server"))
        .arg("--ready-file")
        .arg(&ready)
        .arg("--tls-self-signed")
        .env("KEYBRIDGE_ADMIN_TOKEN", &admin_token);
    if scenario == Scenario::Expired {
        server.args(["--ttl-s", "3"]);
    }
    children.spawn(&log, "server", server)?;
    let addr = wait_for_file(&ready, Duration::from_secs(30))?;
    let url = addr.trim().to_owned();
    // The server made a self-signed certificate; every client trusts exactly it.
    let ca_cert = dir.join("server").join("tls-cert.pem");
    let ca_pem =
        std::fs::read(&ca_cert).with_context(|| format!("reading {}", ca_cert.display()))?;
    log.line(
        "demo",
        &format!("server is up at {url} (TLS, self-signed certificate)"),
    );

    // Operator: accounts and a terminal.
    let admin = Client::with_ca_pem(&url, &admin_token, Some(&ca_pem))?;
    let cny = Currency::from_code("CNY")?;
    for (id, name, balance) in [(PAYER, "Alice", "1000.00"), (PAYEE, "Corner Bookshop", "0")] {
        let a = admin
            .create_account(&CreateAccount {
                id: AccountId::new(id)?,
                display_name: name.into(),
                currency: cny,
                opening_balance_minor: Money::parse_major(balance, cny)?.minor_units,
            })
            .await?;
        log.line(
            "admin",
            &format!(
                "account {} ({}) opened with {}",
                a.id, a.display_name, a.balance_display
            ),
        );
    }
    let terminal = admin.create_terminal("demo checkout").await?;
    log.line("admin", &format!("terminal {} registered", terminal.id));

    // The card, and its enrolment through a reader the demo holds for a moment.
    let card_policy = if scenario == Scenario::Decline {
        "decline"
    } else {
        "approve"
    };
    let (card_link, card_attach) = match args.transport {
        // Over BLE the card is enrolled on a wired vpcd link first.
        Transport::Vpcd | Transport::BleSim => {
            let port = free_port()?;
            (
                CardLinkSpec::VpcdListen(format!("127.0.0.1:{port}")),
                format!("vpcd=127.0.0.1:{port}"),
            )
        }
        Transport::Pcsc => (
            CardLinkSpec::Pcsc(Some(pcscd::VPCD_READER_NAME.to_owned())),
            format!("vpcd={}", pcscd::VPCD_ADDR),
        ),
    };
    let enrol_link = Arc::new(Mutex::new(CardLink::open(&card_link)?));
    let mut card = Command::new(&exe);
    card.args(["card", "--init", "--state"])
        .arg(dir.join("card.json"))
        .arg("--link")
        .arg(card_attach)
        .args(["--policy", card_policy])
        .env("KEYBRIDGE_CARD_PIN", CARD_PIN);
    children.spawn(&log, "card", card)?;
    let payer = AccountId::new(PAYER)?;
    let (enrolled, credential) = match args.method {
        Method::Applet => {
            keybridge_relay::enroll_with(
                &admin,
                enrol_link.clone(),
                &payer,
                "demo card",
                Zeroizing::new(CARD_PIN.to_owned()),
                Duration::from_secs(30),
                method,
                keybridge_relay::PivEnrollment::default(),
            )
            .await?
        }
        Method::Ocra => {
            let uri = keybridge_proto::ocra::OtpauthUri {
                label: format!("KeyBridge:{PAYER}"),
                suite: keybridge_proto::ocra::Suite::parse(DEMO_OCRA_SUITE)?,
                secret: rand::random::<[u8; 32]>().to_vec(),
                counter: 0,
            };
            keybridge_relay::enroll_ocra(
                &admin,
                enrol_link.clone(),
                &payer,
                "demo OCRA card",
                Zeroizing::new(CARD_PIN.to_owned()),
                &uri,
                Duration::from_secs(30),
            )
            .await?
        }
    };
    drop(enrol_link);
    let credential_file = dir.join("device.json");
    credential.save(&credential_file)?;
    match (args.method, method) {
        (Method::Ocra, _) => log.line("admin", &format!("card enrolled for {payer} as OCRA device {} ({DEMO_OCRA_SUITE}): secret sealed on the server, written to the card", enrolled.device_id)),
        (Method::Applet, SignatureMethod::Piv) => log.line("admin", &format!("card enrolled for {payer} as device {}: key made on the card, certificate issued by the server CA (PIV slot 9C, certificate written to 5FC10A)", enrolled.device_id)),
        (Method::Applet, _) => log.line("admin", &format!("card enrolled for {payer} as device {}: key made on the card, CSR signed by the card, certificate issued by the server CA", enrolled.device_id)),
    }

    let relay_card_link = match args.transport {
        Transport::Vpcd | Transport::Pcsc => card_link.to_string(),
        Transport::BleSim => {
            // The enrolled card leaves the wired reader and starts advertising.
            children.stop("card");
            let ble_port = free_port()?;
            let mut card = Command::new(&exe);
            card.args(["card", "--state"])
                .arg(dir.join("card.json"))
                .arg("--link")
                .arg(format!("ble-sim=127.0.0.1:{ble_port}"))
                .args(["--policy", card_policy]);
            children.spawn(&log, "card", card)?;
            log.line(
                "demo",
                &format!(
                    "phone reaches the card over simulated BLE: ATT MTU up to {}, latency {} ms, loss {}, seed {}; secure channel {}",
                    args.ble.mtu,
                    args.ble.latency_ms,
                    args.ble.drop_rate,
                    args.ble.seed,
                    keybridge_transport::secure::SUITE_1_NAME
                ),
            );
            format!("ble-sim:127.0.0.1:{ble_port}")
        }
    };

    // The phone.
    if scenario == Scenario::Expired {
        log.line("demo", "the phone stays offline: nobody will confirm");
    } else {
        // The PIV card has no display or button: the holder declines on the phone.
        let auto = match (scenario, method) {
            (Scenario::Decline, SignatureMethod::Piv) => "decline",
            _ => "approve",
        };
        let mut relay = Command::new(&exe);
        relay
            .args(["relay", "--auto", auto, "--credential"])
            .arg(&credential_file)
            .arg("--ca-cert")
            .arg(&ca_cert)
            .arg("--card")
            .arg(&relay_card_link)
            .env(
                "KEYBRIDGE_PIN",
                if scenario == Scenario::WrongPin {
                    "654321"
                } else {
                    CARD_PIN
                },
            );
        if args.transport == Transport::BleSim {
            relay
                .args(["--mtu", &args.ble.mtu.to_string()])
                .args(["--latency-ms", &args.ble.latency_ms.to_string()])
                .args(["--drop-rate", &args.ble.drop_rate.to_string()])
                .args(["--seed", &args.ble.seed.to_string()]);
        }
        match scenario {
            Scenario::Tamper => {
                relay.args(["--tamper", "amount"]);
            }
            Scenario::TamperPayee => {
                relay.args(["--tamper", "payee"]);
            }
            _ => {}
        }
        children.spawn(&log, "relay", relay)?;
    }

    let before = balances(&admin).await?;
    print_balances(&log, "before", &before);

    // The terminal.
    let amount = if scenario == Scenario::InsufficientFunds {
        "5000.00"
    } else {
        "12.34"
    };
    let pay = Command::new(&exe)
        .args([
            "pay",
            "--server",
            &url,
            "--from",
            PAYER,
            "--to",
            PAYEE,
            "--currency",
            "CNY",
        ])
        .args([
            "--amount",
            amount,
            "--order",
            "ORD-1001",
            "--description",
            "Two paperbacks",
        ])
        .arg("--ca-cert")
        .arg(&ca_cert)
        .env("KEYBRIDGE_API_KEY", &terminal.api_key)
        .env("KEYBRIDGE_LOG_STYLE", "demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting keybridge pay")?;
    let log2 = log.clone();
    let pay_status =
        tokio::task::spawn_blocking(move || -> anyhow::Result<std::process::ExitStatus> {
            let mut pay = pay;
            forward(&log2, "terminal", pay.stderr.take());
            if let Some(out) = pay.stdout.take() {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log2.line("terminal", &line);
                }
            }
            Ok(pay.wait()?)
        })
        .await??;

    let after = balances(&admin).await?;
    print_balances(&log, "after", &after);
    let audit = admin.verify_audit().await?;
    log.line(
        "audit",
        &format!(
            "hash chain {}: {} rows, head seq {} hash {}",
            if audit.intact { "intact" } else { "BROKEN" },
            audit.rows_checked,
            audit.head_seq.unwrap_or(0),
            audit.head_hash_hex.as_deref().map_or("-", |h| &h[..16]),
        ),
    );
    let books = admin.verify_books().await?;
    log.line(
        "books",
        &format!(
            "{}: {} accounts, {} transfers",
            if books.balanced {
                "balanced"
            } else {
                "NOT BALANCED"
            },
            books.accounts_checked,
            books.transfers_checked,
        ),
    );
    let last = admin
        .transactions(1)
        .await?
        .into_iter()
        .next()
        .context("the server lists no transaction")?;

    // Check what the scenario promised.
    let (status, reason) = scenario.expected(args.method);
    let mut ok = last.status == status && last.reason == reason;
    let moved = |id: &str| {
        let b = before
            .iter()
            .find(|(a, _)| a == id)
            .map(|(_, b)| *b)
            .unwrap_or(0);
        let a = after
            .iter()
            .find(|(x, _)| x == id)
            .map(|(_, b)| *b)
            .unwrap_or(0);
        a - b
    };
    // Every outcome, paid or not, is audited in one intact chain, and the
    // books balance.
    ok &= audit.intact && books.balanced;
    let paid = i64::try_from(last.amount_minor).unwrap_or(i64::MAX);
    let (payer_moved, payee_moved) = (moved(PAYER), moved(PAYEE));
    if status == TransactionStatus::Settled {
        ok &= payer_moved == -paid && payee_moved == paid && pay_status.success();
    } else {
        ok &= payer_moved == 0 && payee_moved == 0 && pay_status.code() == Some(2);
    }
    let outcome = match last.reason {
        Some(r) => format!("{} ({})", last.status.as_str(), r.as_str()),
        None => last.status.as_str().to_owned(),
    };
    if ok {
        log.line("demo", &format!("outcome {outcome} as expected; payer moved {payer_moved}, payee moved {payee_moved} minor units"));
    } else {
        log.line("demo", &format!("UNEXPECTED outcome {outcome}, terminal exit {pay_status}; payer moved {payer_moved}, payee moved {payee_moved}"));
    }
    drop(children);
    if args.keep {
        let kept = temp.keep();
        log.line("demo", &format!("kept {}", kept.display()));
    }
    Ok(ok)
}

async fn balances(admin: &Client) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(admin
        .accounts()
        .await?
        .into_iter()
        .filter(|a| !a.system)
        .map(|a| (a.id.as_str().to_owned(), a.balance_minor))
        .collect())
}

fn print_balances(log: &Log, when: &str, balances: &[(String, i64)]) {
    let text: Vec<String> = balances
        .iter()
        .map(|(id, minor)| {
            let m = Money::new(
                minor.unsigned_abs(),
                Currency::from_code("CNY").expect("CNY is in the table"),
            );
            let sign = if *minor < 0 { "-" } else { "" };
            format!("{id} {sign}{m}")
        })
        .collect();
    log.line("ledger", &format!("balances {when}: {}", text.join(", ")));
}
