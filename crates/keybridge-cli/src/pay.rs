//! `keybridge pay`: the terminal.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use keybridge_proto::api::TransactionStatus;
use keybridge_proto::{AccountId, Currency, Money};
use keybridge_terminal::{new_idempotency_key, pay, Client, PayRequest};

#[derive(Debug, Args)]
pub struct PayArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080 or https://….
    #[arg(long)]
    pub server: String,
    /// PEM certificate(s) to trust for an https server (its CA, or the
    /// `tls-cert.pem` of `keybridge server --tls-self-signed`).
    #[arg(long, env = "KEYBRIDGE_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// The terminal's API key (better: set KEYBRIDGE_API_KEY).
    #[arg(long, env = "KEYBRIDGE_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Payer account.
    #[arg(long)]
    pub from: AccountId,
    /// Payee account.
    #[arg(long)]
    pub to: AccountId,
    /// Amount in major units, e.g. 12.34 (exact decimal, no rounding).
    #[arg(long)]
    pub amount: String,
    /// ISO 4217 currency code.
    #[arg(long)]
    pub currency: String,
    /// The merchant's order id.
    #[arg(long)]
    pub order: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Reuse to retry safely: the same key never pays twice.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Stop waiting after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub wait_s: u64,
}

/// Exit codes: 0 settled; 2 rejected, expired or failed; 3 still pending when
/// the wait ran out; 1 any other error.
pub async fn run(mut args: PayArgs) -> ExitCode {
    // Chosen here, not inside, so an error can name it: the payment may
    // exist, and only the same key retries it without paying twice.
    let key = args
        .idempotency_key
        .get_or_insert_with(new_idempotency_key)
        .clone();
    match run_inner(args).await {
        Ok(code) => code,
        Err(e) => {
            println!("error: {e:#}");
            println!("to try again without paying twice: --idempotency-key {key}");
            ExitCode::from(1)
        }
    }
}

async fn run_inner(args: PayArgs) -> anyhow::Result<ExitCode> {
    let currency = Currency::from_code(&args.currency)?;
    let amount = Money::parse_major(&args.amount, currency)?;
    let client = Client::with_ca_pem(
        &args.server,
        &args.api_key,
        crate::roles::read_ca_cert(args.ca_cert.as_deref())?.as_deref(),
    )?;
    let request = PayRequest {
        payer: args.from,
        payee: args.to,
        amount,
        order_id: args.order,
        description: args.description,
        idempotency_key: args.idempotency_key.unwrap_or_else(new_idempotency_key),
        wait_max: Duration::from_secs(args.wait_s),
    };
    let outcome = pay(&client, &request, |created| {
        println!(
            "transaction {} {}: {} to {} ({}), order {} — confirm on your phone",
            created.id,
            created.status.as_str(),
            created.amount_display,
            created.payee_name,
            created.payee,
            created.order_id
        );
    })
    .await?;
    let t = &outcome.last;
    Ok(match t.status {
        TransactionStatus::Settled => {
            println!(
                "settled: {} paid to {} ({})",
                t.amount_display, t.payee_name, t.payee
            );
            ExitCode::SUCCESS
        }
        TransactionStatus::Pending => {
            println!(
                "still pending after {} s; no money has moved yet \
                 (to wait again: the same command with --idempotency-key {})",
                args.wait_s, request.idempotency_key
            );
            ExitCode::from(3)
        }
        status => {
            let (code, words) = t
                .reason
                .map(|r| (r.as_str(), r.describe()))
                .unwrap_or(("unknown", "no reason given"));
            println!("{}: {code}: {words}; no money moved", status.as_str());
            ExitCode::from(2)
        }
    })
}
