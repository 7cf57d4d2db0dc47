//! `keybridge ocra`: one RFC 6287 response on standard output, like `oathtool`
//! does for HOTP. The calculator is `keybridge_proto::ocra`; this is flag glue.

use anyhow::{bail, Context};
use clap::Args;
use keybridge_proto::ocra::{self, Inputs, Suite};
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct OcraArgs {
    /// The OCRA suite, e.g. OCRA-1:HOTP-SHA1-6:QN08.
    #[arg(long)]
    pub suite: String,
    /// The shared secret in hex (or KEYBRIDGE_OCRA_KEY, which `ps` cannot see).
    #[arg(long, env = "KEYBRIDGE_OCRA_KEY", hide_env_values = true)]
    pub key: String,
    /// The counter C, decimal (suites with C).
    #[arg(long)]
    pub counter: Option<u64>,
    /// The question Q, written as the suite's format says (QA text, QN decimal, QH hex).
    #[arg(long)]
    pub question: String,
    /// The PIN, hashed with the suite's P algorithm (or KEYBRIDGE_OCRA_PIN).
    #[arg(
        long,
        env = "KEYBRIDGE_OCRA_PIN",
        hide_env_values = true,
        conflicts_with = "pin_hash"
    )]
    pub pin: Option<String>,
    /// The PIN hash in hex, as the suite's P algorithm made it.
    #[arg(long)]
    pub pin_hash: Option<String>,
    /// Session information S in hex (left-padded with zeros to the suite's length).
    #[arg(long)]
    pub session: Option<String>,
    /// The time for T, in Unix seconds; divided by the suite's time step.
    #[arg(long)]
    pub timestamp: Option<u64>,
}

pub fn run(args: OcraArgs) -> anyhow::Result<()> {
    let suite = Suite::parse(&args.suite).with_context(|| format!("suite {:?}", args.suite))?;
    let key = Zeroizing::new(hex::decode(args.key.trim()).context("--key must be hex")?);
    let pin_hash = match (&args.pin, &args.pin_hash, suite.pin_hash()) {
        (Some(pin), None, Some(h)) => Some(h.digest(Zeroizing::new(pin.clone()).as_bytes())),
        (None, Some(hash), Some(_)) => Some(hex::decode(hash).context("--pin-hash must be hex")?),
        (None, None, None) => None,
        (_, _, None) => bail!("the suite has no P: drop --pin/--pin-hash"),
        (_, _, Some(_)) => bail!("the suite needs --pin or --pin-hash"),
    };
    let session = args
        .session
        .as_deref()
        .map(hex::decode)
        .transpose()
        .context("--session must be hex")?;
    let time_steps = match (args.timestamp, suite.time_step()) {
        (Some(t), Some(step)) => Some(step.steps_at(t)),
        (None, None) => None,
        (Some(_), None) => bail!("the suite has no T: drop --timestamp"),
        (None, Some(_)) => bail!("the suite needs --timestamp (Unix seconds)"),
    };
    let inputs = Inputs {
        counter: args.counter,
        question: &args.question,
        pin_hash: pin_hash.as_deref(),
        session: session.as_deref(),
        time_steps,
    };
    let response = ocra::compute(&suite, &key, &inputs)?;
    println!("{response}");
    Ok(())
}
