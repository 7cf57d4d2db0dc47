//! `keybridge admin`: the operator's commands, over the admin API.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use keybridge_proto::api::CreateAccount;
use keybridge_proto::{AccountId, Currency, Money};
use keybridge_relay::{CardLink, CardLinkSpec};
use keybridge_terminal::Client;
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
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
    /// Enrol a card for an account: key on the card, certificate from the CA.
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
    /// List enrolled devices.
    ListDevices,
    /// List recent transactions, newest first.
    ListTransactions {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
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
    let client = Client::new(&args.server, &args.token)?;
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
        AdminCommand::ListDevices => {
            for d in client.devices().await? {
                println!(
                    "{:<36} {:<20} {:<9} counter {:<6} {}",
                    d.device_id,
                    d.account.as_str(),
                    d.status,
                    d.last_counter,
                    d.label
                );
            }
        }
        AdminCommand::ListTransactions { limit } => {
            for t in client.transactions(limit).await? {
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
    }
    Ok(())
}
