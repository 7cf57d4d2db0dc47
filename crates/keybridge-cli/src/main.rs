//! `keybridge`: one binary, one subcommand per role. This crate is glue: it
//! parses flags, reads secrets from the environment (never from argv, where
//! `ps` would show them) and calls the role crates.
#![forbid(unsafe_code)]

/// The payment path allocates small, short-lived buffers on many threads
/// (JSON, frames, futures); glibc's malloc spent 7 % of a bench run in
/// `malloc`/`free`. mimalloc: 301 -> 273 us of CPU per payment (bench
/// direct-memory, 3 alternated pairs), and less RSS per pending confirmation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod backup;
mod bench;
mod config;
mod demo;
mod limits;
mod ocra;
mod pay;
mod roles;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "keybridge",
    version,
    about = "Out-of-band payment confirmation with an external security device, bridged by a phone"
)]
struct Cli {
    /// Log lines as text or as one JSON object per line (for collectors).
    #[arg(long, global = true, value_enum, env = "KEYBRIDGE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the confirmation server (HTTP API, relay channels, verification, ledger).
    Server(roles::ServerArgs),
    /// Run the virtual security device (a smart card speaking vpcd).
    Card(roles::CardArgs),
    /// Run the phone: receive confirmation requests and drive the card.
    Relay(roles::RelayArgs),
    /// Pay from a terminal and wait for the outcome (exit 0 only when settled).
    Pay(pay::PayArgs),
    /// Manage accounts, terminals and devices.
    Admin(admin::AdminArgs),
    /// Start everything on loopback in a temp dir and run one payment end to end.
    Demo(demo::DemoArgs),
    /// Run many payments end to end and report throughput, latency and the crypto limit.
    Bench(bench::BenchArgs),
    /// Copy a server's data directory, consistently while it runs, and check the copy.
    Backup(backup::BackupArgs),
    /// Compute an RFC 6287 OCRA response (like oathtool for HOTP).
    Ocra(ocra::OcraArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn,hyper=warn"));
    // A log line that cannot be written (stderr a file on a full disk) is
    // dropped. By default tracing-subscriber reports it with `eprintln!`,
    // which panics when stderr fails, in whichever thread was logging: that
    // killed the SQLite writer thread under a file size limit (found with
    // `prlimit --fsize` on a paying server; crash.rs tests it).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_target(false);
    // Under `keybridge demo` the parent stamps each line with its own clock.
    if format == LogFormat::Json {
        // Spans (the request span carries method, path and request id) go
        // into each line's `span`/`spans` fields.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else if std::env::var("KEYBRIDGE_LOG_STYLE").as_deref() == Ok("demo") {
        builder
            .without_time()
            .with_level(false)
            .with_ansi(false)
            .init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    match std::panic::catch_unwind(run) {
        Ok(code) => code,
        // The reader of our output went away (`keybridge admin audit | head`):
        // stop as a Unix tool stopped by SIGPIPE would, with its exit status,
        // after the unwinding has stopped the processes `demo` started.
        Err(payload) if is_broken_pipe(payload.as_ref()) => ExitCode::from(BROKEN_PIPE_EXIT),
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// What a shell reports for a process ended by SIGPIPE: 128 + 13.
const BROKEN_PIPE_EXIT: u8 = 141;

/// `println!` panics when stdout is a pipe whose reader has gone (Rust
/// ignores SIGPIPE, so the write fails with `EPIPE`). That is no bug to
/// report: the panic hook stays quiet about it, and `main` ends the process.
fn quiet_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            report(info);
        }
    }));
}

/// Whether a panic is `println!`'s (or `print!`'s) on a closed pipe.
fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

fn run() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = runtime.block_on(survive_file_size_limit()) {
        eprintln!("error: cannot handle SIGXFSZ: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Server(args) => runtime.block_on(roles::server(args)),
        Command::Card(args) => roles::card(args),
        Command::Relay(args) => runtime.block_on(roles::relay(args)),
        Command::Pay(args) => return runtime.block_on(pay::run(args)),
        Command::Admin(args) => runtime.block_on(admin::run(args)),
        Command::Demo(args) => return runtime.block_on(demo::run(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Backup(args) => backup::run(args),
        Command::Ocra(args) => ocra::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A write past the file size limit (`RLIMIT_FSIZE`, a quota, `ulimit -f`)
/// sends SIGXFSZ, whose default action ends the process mid-write. With a
/// handler installed the write fails with `EFBIG` instead, which SQLite, the
/// card's state files and the logs already answer as a failed write: the
/// batch rolls back and its callers hear an error, the card refuses the
/// command, and the process goes on to serve once there is room again (as
/// PostgreSQL ignores SIGXFSZ). Each one is logged. The handler stays for
/// the life of the process, whichever role it runs.
async fn survive_file_size_limit() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut xfsz = signal(SignalKind::from_raw(libc::SIGXFSZ))?;
    tokio::spawn(async move {
        while xfsz.recv().await.is_some() {
            tracing::error!(
                "a write went past the file size limit (SIGXFSZ): it failed; \
                 raise the limit or free space"
            );
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `keybridge relay --auto approve|decline` is the scripting interface;
    /// a typo must be an error, not a prompt that blocks a script.
    #[test]
    fn relay_auto_answers_parse() {
        let base = [
            "keybridge",
            "relay",
            "--credential",
            "device.json",
            "--card",
            "vpcd-listen:127.0.0.1:35963",
        ];
        for (value, want) in [
            ("approve", "Approve"),
            ("decline", "Decline"),
            ("prompt", "Prompt"),
        ] {
            let cli = Cli::try_parse_from(base.iter().copied().chain(["--auto", value])).unwrap();
            match cli.command {
                Command::Relay(args) => assert_eq!(format!("{:?}", args.auto), want),
                other => panic!("{other:?}"),
            }
        }
        assert!(Cli::try_parse_from(base.iter().copied().chain(["--auto", "yes"])).is_err());
    }

    #[test]
    fn log_format_and_server_tls_flags_parse() {
        let cli = Cli::try_parse_from([
            "keybridge",
            "--log-format",
            "json",
            "server",
            "--tls-self-signed",
            "--config",
            "kb.toml",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        match cli.command {
            Command::Server(args) => {
                assert_eq!(args.tls_self_signed, Some(true));
                assert_eq!(
                    args.config.as_deref(),
                    Some(std::path::Path::new("kb.toml"))
                );
                assert_eq!(args.listen, None, "unset: the file or the default decides");
            }
            other => panic!("{other:?}"),
        }
    }
}
