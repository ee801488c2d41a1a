//! `klikit`: sign, send and receive Klikit webhooks from the command line.
//!
//! ```sh
//! cargo install klikit-cli
//! export KLIKIT_WEBHOOK_SECRET=...
//! klikit sign body.json                       # the x-klikit-signature of a file (or - for stdin)
//! klikit sign --scheme klikit-v1 body.json     # t=<now>,v1=<hex> (Partner API v1)
//! klikit send http://localhost:8080/webhooks/klikit --fixture created --repeat 3
//! klikit send http://localhost:8080/webhooks/klikit --scheme klikit-v1 --fixture cancellation_flow
//! klikit serve                                # the example receiver
//! klikit check http://localhost:8080/webhooks/klikit   # grade an endpoint against Klikit's contract
//! ```

mod check;
mod send;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "klikit", version, about = "Sign, send and receive Klikit order webhooks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a body's signature header value (`klikit sign --help`).
    #[command(
        about = "Print a body's signature header value: today's hex, t=<T>,v1=<hex> (klikit-v1) or v1,<base64> \
                 (standard-webhooks)"
    )]
    Sign(send::SignArgs),
    /// POST a signed delivery to a receiver and print each answer.
    Send(send::SendArgs),
    /// Run the example receiver (configured by the same environment variables).
    Serve,
    /// Grade any webhook endpoint against Klikit's contract with real, signed deliveries.
    Check(check::CheckArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sign(args) => send::sign(args),
        Command::Send(args) => tokio::time::timeout(Duration::from_secs(300), send::send(args))
            .await
            .unwrap_or_else(|_| Err("gave up after 300 s".into())),
        Command::Serve => {
            klikit_cli::init_tracing();
            klikit_cli::receiver::serve_from_env().await.map_err(|e| e.to_string())
        }
        Command::Check(args) => check::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("klikit: {message}");
            ExitCode::FAILURE
        }
    }
}
