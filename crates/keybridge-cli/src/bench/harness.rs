//! The system under test, all in this process: the server, a merchant, one
//! terminal, and K cards each with its payer account and (when payments are
//! to settle) its relay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use keybridge_proto::api::CreateAccount;
use keybridge_proto::{AccountId, Currency};
use keybridge_relay::link::InProcessCard;
use keybridge_relay::{CardLink, CardLinkSpec, Decision, RelayOptions};
use keybridge_server::RunningServer;
use keybridge_terminal::Client;
use zeroize::Zeroizing;

use super::direct_card::{CardState, DirectCard};
use super::{BenchTransport, PIN};

/// Each payer's opening balance: more than any run spends.
pub const PAYER_OPENING_MINOR: u64 = 1_000_000_000_000;

/// What the harness starts.
#[derive(Debug, Clone)]
pub struct HarnessConfig {
    /// `sqlite:DIR`, `postgres:URL`, or `None` for SQLite in a temporary directory.
    pub store: Option<String>,
    /// Server instances on that store (more than one needs PostgreSQL).
    pub instances: usize,
    /// How long a transaction may stay pending before the sweeper expires it.
    pub confirmation_ttl_s: u64,
    /// Hide progress bars (the output is one JSON object).
    pub quiet: bool,
}

/// How the cards take part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cards {
    /// Enrolled, then serving payments through a relay over this transport.
    Serving(BenchTransport),
    /// Enrolled in-process, with no relay: the payer has an active device, so
    /// transactions can be created, but nothing ever answers them.
    Silent,
}

/// What the payments moved: the payers' debits against their opening
/// balances, and what reached the merchant (nothing when payees are seeded
/// accounts).
#[derive(Debug, Clone, Copy)]
pub struct Ledger {
    pub payers_debited_minor: i64,
    pub merchant_credited_minor: i64,
}

impl Ledger {
    /// What moved between `before` and this reading.
    pub fn since(self, before: Ledger) -> anyhow::Result<Ledger> {
        let moved =
            |now: i64, then: i64| now.checked_sub(then).context("ledger figures out of range");
        Ok(Ledger {
            payers_debited_minor: moved(self.payers_debited_minor, before.payers_debited_minor)?,
            merchant_credited_minor: moved(
                self.merchant_credited_minor,
                before.merchant_credited_minor,
            )?,
        })
    }
}

/// A running server with its merchant and terminal.
#[derive(Debug)]
pub struct Harness {
    /// The first instance: the admin client and the relays use it.
    pub server: RunningServer,
    /// The other instances on the same database; the terminal uses the last.
    others: Vec<RunningServer>,
    pub admin: Client,
    pub terminal: Client,
    pub merchant: AccountId,
    pub currency: Currency,
    quiet: bool,
    // Card state files, and the database unless `--store` names a directory.
    temp: tempfile::TempDir,
}

impl Harness {
    pub async fn start(config: &HarnessConfig) -> anyhow::Result<Harness> {
        let temp = tempfile::Builder::new()
            .prefix("keybridge-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        let (data_dir, database_url) = match config.store.as_deref() {
            None => (temp.path().join("server"), None),
            Some(spec) => match (spec.strip_prefix("sqlite:"), spec.strip_prefix("postgres:")) {
                (Some(dir), _) => (std::path::PathBuf::from(dir), None),
                (_, Some(url)) => (temp.path().join("server"), Some(url.to_owned())),
                _ => anyhow::bail!("--store must be sqlite:DIR or postgres:URL"),
            },
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let token = hex::encode(rand::random::<[u8; 24]>());
        let mut server_config =
            keybridge_server::ServerConfig::new("127.0.0.1:0".parse()?, data_dir, token.clone());
        server_config.confirmation_ttl_s = config.confirmation_ttl_s;
        server_config.database_url = database_url;
        // A load generator is no flood of prompts on a person's phone: the
        // open loop may hold hundreds per card, `--pending` thousands. The
        // limit is still checked (counted) on every creation.
        server_config.pending_per_payer_max = u32::MAX;
        // One terminal key sends every payment, thousands a second: the
        // rate is still checked on every request, and never reached.
        server_config.terminal_rate_per_s = 1_000_000;
        let server = keybridge_server::start(server_config.clone()).await?;
        // The others read the CA and master key the first one made.
        let mut others = Vec::new();
        for _ in 1..config.instances {
            others.push(keybridge_server::start(server_config.clone()).await?);
        }
        let url = format!("http://{}", server.addr);
        let admin = Client::new(&url, &token)?;
        let currency = Currency::from_code("CNY")?;
        let merchant = AccountId::new("merchant")?;
        admin
            .create_account(&CreateAccount {
                id: merchant.clone(),
                display_name: "Merchant".into(),
                currency,
                opening_balance_minor: 0,
            })
            .await?;
        let terminal_key = admin.create_terminal("bench").await?.api_key;
        let terminal_url = others
            .last()
            .map_or(url, |last| format!("http://{}", last.addr));
        let terminal = Client::new(&terminal_url, &terminal_key)?;
        Ok(Harness {
            server,
            others,
            admin,
            terminal,
            merchant,
            currency,
            quiet: config.quiet,
            temp,
        })
    }

    /// Stops the server, then removes the temporary directory.
    pub async fn shutdown(self) {
        for other in self.others {
            other.shutdown().await;
        }
        self.server.shutdown().await;
    }

    /// A progress bar, hidden when the output is JSON.
    /// The run's scratch directory, removed with the harness.
    pub fn scratch(&self) -> &std::path::Path {
        self.temp.path()
    }

    pub fn progress(&self, len: u64, template: &str) -> anyhow::Result<indicatif::ProgressBar> {
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(indicatif::ProgressStyle::with_template(template)?);
        if self.quiet {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Ok(bar)
    }

    /// Creates `count` funded payer accounts, each with an enrolled card;
    /// returns the payers.
    pub async fn cards(&self, count: usize, cards: Cards) -> anyhow::Result<Vec<AccountId>> {
        let setup = self.progress(
            u64::try_from(count)?,
            "setting up cards {bar:30} {pos}/{len}",
        )?;
        let mut payers = Vec::new();
        for i in 0..count {
            let payer = AccountId::new(&format!("payer-{i}"))?;
            self.admin
                .create_account(&CreateAccount {
                    id: payer.clone(),
                    display_name: format!("Payer {i}"),
                    currency: self.currency,
                    opening_balance_minor: PAYER_OPENING_MINOR,
                })
                .await?;
            self.card(i, &payer, cards).await?;
            payers.push(payer);
            setup.inc(1);
        }
        setup.finish_and_clear();
        Ok(payers)
    }

    /// Money moved so far, read back from the server.
    pub async fn ledger(&self, payers: &[AccountId]) -> anyhow::Result<Ledger> {
        let opening = i64::try_from(PAYER_OPENING_MINOR)?;
        let mut payers_debited_minor = 0i64;
        for payer in payers {
            let balance = self.admin.account(payer).await?.balance_minor;
            payers_debited_minor = opening
                .checked_sub(balance)
                .and_then(|d| payers_debited_minor.checked_add(d))
                .context("payer debits out of range")?;
        }
        Ok(Ledger {
            payers_debited_minor,
            merchant_credited_minor: self.admin.account(&self.merchant).await?.balance_minor,
        })
    }

    async fn card(&self, i: usize, payer: &AccountId, cards: Cards) -> anyhow::Result<()> {
        let transport = match cards {
            Cards::Serving(transport) => transport,
            Cards::Silent => BenchTransport::Direct,
        };
        // The card process listens on BLE only after the enrolment; a
        // picked port is the best there is for a listener bound elsewhere.
        let ble_port = keybridge_transport::port::listen_port()?;
        let state_path = self.temp.path().join(format!("card-{i}.json"));
        // In process there is no reader: the spec is only the relay's label.
        let in_process = |state| -> anyhow::Result<(CardLink, CardLinkSpec, u16)> {
            let card = DirectCard::new(&state_path, state)?;
            let spec = CardLinkSpec::VpcdListen("127.0.0.1:0".to_owned());
            Ok((CardLink::InProcess(InProcessCard(Box::new(card))), spec, 0))
        };
        let (enrol, spec, port) = match transport {
            BenchTransport::Direct => in_process(CardState::File)?,
            BenchTransport::DirectMemory => in_process(CardState::Memory)?,
            BenchTransport::Vpcd | BenchTransport::BleSim => CardLink::vpcd_on_free_port()?,
        };
        let enrol = Arc::new(Mutex::new(enrol));
        let options = move |reconnect: bool| keybridge_card::CardOptions {
            state_path: state_path.clone(),
            vpcd_addr: format!("127.0.0.1:{port}"),
            policy: keybridge_card::Policy::ApproveQuietly,
            init_pin: Some(PIN.to_owned()),
            reconnect,
            profile: keybridge_card::Profile::default(),
        };
        if !transport.in_process() {
            std::thread::spawn(move || match transport {
                BenchTransport::BleSim => {
                    // The enrolment reader closing ends this run; then the same
                    // card (same state file) starts advertising on BLE.
                    let _ = keybridge_card::run(options(false));
                    keybridge_card::run_with_link(
                        options(true),
                        keybridge_card::DeviceLink::BleSim {
                            addr: format!("127.0.0.1:{ble_port}"),
                            att_mtu_max: 185,
                            shape: keybridge_transport::ble::sim::LinkShape::default(),
                        },
                    )
                }
                _ => keybridge_card::run(options(true)),
            });
        }
        let (_, credential) = keybridge_relay::enroll(
            &self.admin,
            Arc::clone(&enrol),
            payer,
            "bench",
            Zeroizing::new(PIN.to_owned()),
            Duration::from_secs(30),
        )
        .await?;
        if cards == Cards::Silent {
            return Ok(());
        }
        let relay_options = |card: CardLinkSpec| RelayOptions {
            credential,
            card,
            pin: Some(Zeroizing::new(PIN.to_owned())),
            decision: Decision::Approve,
            tamper: None,
            card_wait: Duration::from_secs(30),
            quiet: true,
            ca_cert_pem: None,
            applet: None,
            answer_wait: keybridge_relay::SOCKET_ANSWER_WAIT,
            outbox: None,
            silence_max: keybridge_relay::SERVER_SILENCE_MAX,
        };
        match transport {
            BenchTransport::Direct | BenchTransport::DirectMemory => {
                // The same in-process card that was enrolled serves the relay.
                let link = Arc::try_unwrap(enrol)
                    .map_err(|_| anyhow::anyhow!("the enrolment still holds the card"))?
                    .into_inner()
                    .map_err(|_| anyhow::anyhow!("the card's lock was poisoned"))?;
                tokio::spawn(keybridge_relay::run_with_link(relay_options(spec), link));
            }
            BenchTransport::Vpcd => {
                drop(enrol);
                tokio::spawn(keybridge_relay::run(relay_options(spec)));
            }
            BenchTransport::BleSim => {
                drop(enrol);
                tokio::spawn(keybridge_relay::run(relay_options(CardLinkSpec::BleSim(
                    format!("127.0.0.1:{ble_port}"),
                    keybridge_relay::link::BleSimSettings {
                        att_mtu: 185,
                        ..Default::default()
                    },
                ))));
            }
        }
        Ok(())
    }
}
