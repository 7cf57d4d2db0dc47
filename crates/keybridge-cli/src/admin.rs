//! `keybridge admin`: the operator's commands, over the admin API.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use keybridge_proto::api::{
    b64, AuditEntryView, CreateAccount, ImportCertificate, SignatureMethod, TransactionView,
};
use keybridge_proto::ocra::OtpauthUri;
use keybridge_proto::{AccountId, Currency, Money, TransactionId};
use keybridge_relay::{CardLink, CardLinkSpec};
use keybridge_terminal::Client;
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080 or https://….
    #[arg(long)]
    pub server: String,
    /// PEM certificate(s) to trust for an https server (its CA, or the
    /// `tls-cert.pem` of `keybridge server --tls-self-signed`).
    #[arg(long, env = "KEYBRIDGE_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// The admin token (better: set KEYBRIDGE_ADMIN_TOKEN).
    #[arg(long, env = "KEYBRIDGE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an account, funded from the currency's issuance account.
    CreateAccount {
        #[arg(long)]
        id: AccountId,
        #[arg(long)]
        name: String,
        #[arg(long)]
        currency: String,
        /// Opening balance in major units, e.g. 1000.00.
        #[arg(long, default_value = "0")]
        balance: String,
    },
    /// List accounts with balances.
    ListAccounts,
    /// Create a terminal and print its API key (shown once).
    CreateTerminal {
        #[arg(long)]
        name: String,
    },
    /// Enrol a card for an account: key made on the card, a PKCS#10 request
    /// signed by the card, the certificate from the built-in CA written back.
    /// The card's PIN comes from KEYBRIDGE_PIN.
    Enroll {
        #[arg(long)]
        account: AccountId,
        /// How to reach the card: `vpcd-listen:HOST:PORT`, `pcsc` or `pcsc:READER`.
        #[arg(long)]
        card: CardLinkSpec,
        /// Which applet to enrol: the transaction applet, or PIV slot 9C
        /// (management key from KEYBRIDGE_PIV_MANAGEMENT_KEY, 48 hex digits;
        /// default: the factory key 0102…08 ×3).
        #[arg(long, value_enum, default_value_t = crate::roles::AppletArg::Keybridge)]
        applet: crate::roles::AppletArg,
        /// Where to write the relay's device credential (must not exist).
        #[arg(long)]
        credential_out: PathBuf,
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long, default_value_t = 30)]
        card_wait_s: u64,
    },
    /// Enrol an OCRA-mode card: the server keeps the secret of an otpauth
    /// URI (sealed), the card gets the same secret. The URI comes from
    /// --uri-file (one URI; a file keeps the secret out of `ps`) or
    /// KEYBRIDGE_OCRA_URI. The card's PIN comes from KEYBRIDGE_PIN.
    EnrollOcra {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        card: CardLinkSpec,
        #[arg(long)]
        credential_out: PathBuf,
        /// A file holding the otpauth://ocra/ URI.
        #[arg(long)]
        uri_file: Option<PathBuf>,
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long, default_value_t = 30)]
        card_wait_s: u64,
    },
    /// Enrol a device whose certificate an external CA issued (path-validated
    /// by the server); writes the relay's credential file.
    ImportCertificate {
        #[arg(long)]
        account: AccountId,
        /// The device certificate, PEM or DER.
        #[arg(long)]
        certificate: PathBuf,
        #[arg(long)]
        credential_out: PathBuf,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List enrolled devices.
    ListDevices,
    /// Rename a device.
    RenameDevice {
        #[arg(long)]
        id: String,
        #[arg(long)]
        label: String,
    },
    /// Disable a device: its relay credential stops working.
    DisableDevice {
        #[arg(long)]
        id: String,
    },
    /// Revoke a device's certificate (or OCRA secret): every confirmation not
    /// yet accepted is refused, and the CRL lists the serial.
    RevokeDevice {
        #[arg(long)]
        id: String,
    },
    /// Save the built-in CA's CRL (DER) to a file.
    Crl {
        #[arg(long)]
        out: PathBuf,
    },
    /// List recent transactions, newest first.
    ListTransactions {
        /// At most this many (1 to 500), or this many per page with --all.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Start after this transaction id (the last one a listing printed).
        #[arg(long)]
        before: Option<TransactionId>,
        /// Every transaction, page by page, to the first one ever made.
        #[arg(long)]
        all: bool,
    },
    /// Show one transaction: its status, the terminal that made it and the
    /// transfers it made.
    ShowTransaction {
        #[arg(long)]
        id: TransactionId,
    },
    /// List the terminals, disabled ones included.
    ListTerminals,
    /// Disable a terminal: its API key is refused from now on (say, after a
    /// leak). Payments it already started go on to their end.
    DisableTerminal {
        #[arg(long)]
        id: String,
    },
    /// Give a terminal a new API key (printed once) and refuse its old one
    /// from now on; it keeps its id, transactions and webhooks. For a key
    /// that may have leaked, on a till that goes on working.
    RotateTerminalKey {
        #[arg(long)]
        id: String,
    },
    /// Print the audit log in `seq` order: every state change, one hash chain.
    Audit {
        /// Start after this `seq` (0: from the first row).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many rows (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Have the server recompute the audit log's hash chain; exits with an
    /// error if it is broken. Note the head hash it prints: a later check
    /// that reaches the same row with the same hash shows nothing before it
    /// changed.
    VerifyAudit,
    /// Have the server read the books back (every balance equals its
    /// transfers, each currency sums to zero, money moved for exactly the
    /// settled transactions); exits with an error if they do not balance.
    VerifyBooks,
}

/// The PIV management key from `KEYBRIDGE_PIV_MANAGEMENT_KEY`, or the default.
fn piv_enrollment() -> anyhow::Result<keybridge_relay::PivEnrollment> {
    let Ok(text) = std::env::var("KEYBRIDGE_PIV_MANAGEMENT_KEY") else {
        return Ok(keybridge_relay::PivEnrollment::default());
    };
    let bytes = Zeroizing::new(
        hex::decode(text.trim()).context("KEYBRIDGE_PIV_MANAGEMENT_KEY is not hex")?,
    );
    let key: [u8; 24] = bytes
        .as_slice()
        .try_into()
        .context("KEYBRIDGE_PIV_MANAGEMENT_KEY must be 24 bytes (48 hex digits)")?;
    Ok(keybridge_relay::PivEnrollment {
        management_key: Zeroizing::new(key),
    })
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = Client::with_ca_pem(
        &args.server,
        &args.token,
        crate::roles::read_ca_cert(args.ca_cert.as_deref())?.as_deref(),
    )?;
    match args.command {
        AdminCommand::CreateAccount {
            id,
            name,
            currency,
            balance,
        } => {
            let currency = Currency::from_code(&currency)?;
            let opening = Money::parse_major(&balance, currency)?;
            let account = client
                .create_account(&CreateAccount {
                    id,
                    display_name: name,
                    currency,
                    opening_balance_minor: opening.minor_units,
                })
                .await?;
            println!(
                "created {} ({}): {}",
                account.id, account.display_name, account.balance_display
            );
        }
        AdminCommand::ListAccounts => {
            for a in client.accounts().await? {
                let kind = if a.system { " [system]" } else { "" };
                println!(
                    "{:<24} {:>18}  {}{kind}",
                    a.id.as_str(),
                    a.balance_display,
                    a.display_name
                );
            }
        }
        AdminCommand::CreateTerminal { name } => {
            let t = client.create_terminal(&name).await?;
            println!("terminal {} ({})", t.id, t.name);
            println!("api key (shown once): {}", t.api_key);
        }
        AdminCommand::Enroll {
            account,
            card,
            credential_out,
            label,
            card_wait_s,
            applet,
        } => {
            let pin = Zeroizing::new(
                std::env::var("KEYBRIDGE_PIN")
                    .context("enrolment needs the card PIN in KEYBRIDGE_PIN")?,
            );
            let link = Arc::new(Mutex::new(CardLink::open(&card)?));
            println!("waiting for the card at {card}");
            let (enrolled, credential) = keybridge_relay::enroll_with(
                &client,
                link,
                &account,
                &label,
                pin,
                Duration::from_secs(card_wait_s),
                applet.method(),
                piv_enrollment()?,
            )
            .await?;
            credential.save(&credential_out)?;
            println!(
                "enrolled device {} for {}; credential written to {}",
                enrolled.device_id,
                enrolled.account,
                credential_out.display()
            );
        }
        AdminCommand::EnrollOcra {
            account,
            card,
            credential_out,
            uri_file,
            label,
            card_wait_s,
        } => {
            let pin = Zeroizing::new(
                std::env::var("KEYBRIDGE_PIN")
                    .context("enrolment needs the card PIN in KEYBRIDGE_PIN")?,
            );
            let text = Zeroizing::new(match uri_file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
                None => std::env::var("KEYBRIDGE_OCRA_URI")
                    .context("give --uri-file or KEYBRIDGE_OCRA_URI")?,
            });
            let uri = OtpauthUri::parse(text.trim())?;
            let link = Arc::new(Mutex::new(CardLink::open(&card)?));
            println!("waiting for the card at {card}");
            let (enrolled, credential) = keybridge_relay::enroll_ocra(
                &client,
                link,
                &account,
                &label,
                pin,
                &uri,
                Duration::from_secs(card_wait_s),
            )
            .await?;
            credential.save(&credential_out)?;
            println!(
                "enrolled OCRA device {} ({}) for {}; credential written to {}",
                enrolled.device_id,
                uri.suite,
                enrolled.account,
                credential_out.display()
            );
        }
        AdminCommand::ImportCertificate {
            account,
            certificate,
            credential_out,
            label,
        } => {
            let bytes = std::fs::read(&certificate)
                .with_context(|| format!("reading {}", certificate.display()))?;
            let der = keybridge_server::ca::certificates_from_pem_or_der(&bytes)
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .next()
                .context("no certificate in the file")?;
            let enrolled = client
                .import_certificate(&ImportCertificate {
                    account,
                    certificate: b64::encode(&der),
                    label,
                    method: SignatureMethod::TransactionApplet,
                })
                .await?;
            let credential = keybridge_relay::DeviceCredential {
                server: client.base_url().to_owned(),
                device_id: enrolled.device_id.clone(),
                account: enrolled.account.clone(),
                credential: enrolled.credential.clone(),
                method: SignatureMethod::TransactionApplet,
                card_certificate: Some(enrolled.certificate.clone()),
            };
            credential.save(&credential_out)?;
            println!(
                "imported device {} for {}; credential written to {}",
                enrolled.device_id,
                enrolled.account,
                credential_out.display()
            );
        }
        AdminCommand::ListDevices => {
            for d in client.devices().await? {
                println!(
                    "{:<36} {:<20} {:<18} {:<9} counter {:<6} {}",
                    d.device_id,
                    d.account.as_str(),
                    d.method,
                    d.status,
                    d.last_counter,
                    d.label
                );
            }
        }
        AdminCommand::RenameDevice { id, label } => {
            let d = client.rename_device(&id, &label).await?;
            println!("device {} is now {:?}", d.device_id, d.label);
        }
        AdminCommand::DisableDevice { id } => {
            let d = client.disable_device(&id).await?;
            println!("device {} {}", d.device_id, d.status);
        }
        AdminCommand::RevokeDevice { id } => {
            let d = client.revoke_device(&id).await?;
            println!("device {} {}", d.device_id, d.status);
        }
        AdminCommand::Crl { out } => {
            let der = client.crl().await?;
            std::fs::write(&out, &der).with_context(|| format!("writing {}", out.display()))?;
            println!("CRL ({} bytes) written to {}", der.len(), out.display());
        }
        AdminCommand::ListTerminals => {
            for t in client.terminals().await? {
                println!("{} {:<8} {}", t.id, t.status, t.name);
            }
        }
        AdminCommand::DisableTerminal { id } => {
            let t = client.disable_terminal(&id).await?;
            println!("terminal {} {}", t.id, t.status);
        }
        AdminCommand::RotateTerminalKey { id } => {
            let t = client.rotate_terminal_key(&id).await?;
            println!("terminal {} ({}): new api key", t.id, t.name);
            println!("api key (shown once): {}", t.api_key);
        }
        AdminCommand::Audit { after, limit } => {
            for r in client.audit(after, limit).await? {
                print_audit_row(&r);
            }
        }
        AdminCommand::VerifyAudit => {
            let v = client.verify_audit().await?;
            let head = match (v.head_seq, v.head_hash_hex.as_deref()) {
                (Some(seq), Some(hash)) => format!("head seq {seq}, hash {hash}"),
                _ => "no rows yet".to_owned(),
            };
            match v.broken_at_seq {
                None => println!("audit chain intact: {} rows, {head}", v.rows_checked),
                Some(seq) => anyhow::bail!(
                    "audit chain BROKEN at seq {seq}: {} rows link up before it ({head})",
                    v.rows_checked
                ),
            }
        }
        AdminCommand::VerifyBooks => {
            let v = client.verify_books().await?;
            if !v.balanced {
                let broken: Vec<String> = v
                    .broken
                    .iter()
                    .map(|b| format!("{} {} ({})", b.count, b.message, b.rule))
                    .collect();
                anyhow::bail!("the books do NOT balance: {}", broken.join("; "));
            }
            println!(
                "books balance: {} accounts, {} transfers",
                v.accounts_checked, v.transfers_checked
            );
        }
        AdminCommand::ShowTransaction { id } => {
            let detail = client.transaction_detail(&id).await?;
            print_transactions(std::slice::from_ref(&detail.transaction));
            println!(
                "terminal {}, last changed at {} (unix s)",
                detail.terminal_id, detail.updated_at_unix_s
            );
            for t in &detail.transfers {
                println!(
                    "transfer {} {}: {} {} from {} to {}",
                    t.id,
                    t.kind,
                    t.currency,
                    Money::new(t.amount_minor, t.currency).major_string(),
                    t.debit_account,
                    t.credit_account
                );
            }
            println!("audit rows:");
            for r in &detail.audit {
                print_audit_row(r);
            }
        }
        AdminCommand::ListTransactions { limit, before, all } => {
            let mut before = before;
            loop {
                let page = match &before {
                    None => client.transactions(limit).await?,
                    Some(id) => client.transactions_before(id, limit).await?,
                };
                print_transactions(&page);
                let full = page.len() == limit as usize;
                match page.last() {
                    Some(last) if all && full => before = Some(last.id),
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

/// One audit row on a line: seq, time, event, transaction, the start of
/// its hash, its details.
fn print_audit_row(r: &AuditEntryView) {
    let tx = r.transaction_id.map(|t| t.to_hex()).unwrap_or_default();
    let hash = r.hash_hex.get(..16).unwrap_or(&r.hash_hex);
    println!(
        "{:>8} {} {:<26} {:<32} {} {}",
        r.seq, r.at_unix_s, r.event, tx, hash, r.detail
    );
}

/// One line per transaction: id, status, reason, amount, payer -> payee, order.
fn print_transactions(transactions: &[TransactionView]) {
    for t in transactions {
        let reason = t.reason.map(|r| r.as_str()).unwrap_or("");
        println!(
            "{} {:<8} {:<18} {:>16} {} -> {} {}",
            t.id,
            t.status.as_str(),
            reason,
            t.amount_display,
            t.payer,
            t.payee,
            t.order_id
        );
    }
}
