//! `--accounts N`: N extra accounts, made through the store before the run,
//! that payments then pay to, so the ledger works on a large accounts table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use keybridge_proto::{AccountId, Currency};
use keybridge_server::store::NewAccount;
use keybridge_server::Store;
use rand::Rng;

/// Accounts created at once: twice the store's group-commit batch (256
/// writes), so the writer always has a full batch waiting.
const SEED_TASKS: usize = 512;

/// The `i`-th seeded account, `acct-0000001` for 1.
pub fn seeded_id(i: u64) -> AccountId {
    // "acct-" and at most 20 digits: ASCII letters, digits and '-' within
    // AccountId::LEN_MAX (34) for every u64.
    AccountId::new(&format!("acct-{i:07}")).expect("a valid account id for any u64")
}

/// Whom payments pay.
#[derive(Debug, Clone)]
pub enum Payees {
    /// The one merchant account.
    Merchant(AccountId),
    /// `acct-0000001` to `acct-{count}`, drawn uniformly at random.
    Seeded { count: u64 },
}

impl Payees {
    pub fn pick(&self) -> AccountId {
        match self {
            Payees::Merchant(id) => id.clone(),
            Payees::Seeded { count } => seeded_id(rand::thread_rng().gen_range(1..=*count)),
        }
    }
}

/// Creates `acct-0000001` to `acct-{count}` (zero opening balance) with
/// [`SEED_TASKS`] concurrent store calls; returns how long it took.
pub async fn seed(
    store: Arc<dyn Store>,
    now_unix_s: u64,
    count: u64,
    currency: Currency,
    progress: indicatif::ProgressBar,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SEED_TASKS {
        let store = Arc::clone(&store);
        let next = Arc::clone(&next);
        let progress = progress.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > count {
                    return anyhow::Ok(());
                }
                let id = seeded_id(i);
                store
                    .create_account(
                        NewAccount {
                            id: id.clone(),
                            display_name: format!("Account {i}"),
                            currency,
                            opening_balance_minor: 0,
                        },
                        now_unix_s,
                    )
                    .await
                    .with_context(|| format!("creating account {id}"))?;
                progress.inc(1);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("an account-seeding task failed")??;
    }
    progress.finish_and_clear();
    Ok(started.elapsed())
}
