//! `keybridge backup`: flag glue for `keybridge_server::backup`, which copies
//! a data directory (safe while its server runs) and checks the copy.

use std::path::PathBuf;

use clap::Args;

use crate::config::DATA_DIR_DEFAULT;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The server's data directory (the one `keybridge server` runs on).
    #[arg(long, env = "KEYBRIDGE_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// Where the copy goes: a new or empty directory. Start a server on it
    /// (`--data-dir`) to restore.
    #[arg(long)]
    pub to: PathBuf,
}

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    let report = keybridge_server::backup::backup(&args.data_dir, &args.to)?;
    let check = &report.check;
    println!(
        "backed up {} to {}",
        args.data_dir.display(),
        args.to.display()
    );
    println!(
        "database    {} bytes, one consistent snapshot",
        report.database_bytes
    );
    println!("files       {}", report.files.join(", "));
    if !report.skipped.is_empty() {
        println!(
            "left out    {} (not regular files)",
            report.skipped.join(", ")
        );
    }
    println!(
        "checked     integrity ok; books balance over {} accounts; {} transactions, {} settled",
        check.accounts, check.transactions, check.settled
    );
    match (check.audit.last_seq(), check.audit.head()) {
        (Some(seq), Some(head)) => println!(
            "audit chain {} rows intact, head seq {seq} hash {}",
            check.audit.rows(),
            hex::encode(head)
        ),
        _ => println!("audit chain empty"),
    }
    Ok(())
}
