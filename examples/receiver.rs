//! The reference Klikit webhook receiver, in Rust.
//!
//! Run with
//!
//! ```sh
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run --example receiver --features receiver
//! ```
//!
//! Everything is in `klikit_webhook::receiver`: it serves `POST
//! /webhooks/klikit` on `PORT` (default 8080), answers `200
//! {"status":"received"}` once the event is queued for a background worker,
//! and drains the worker on Ctrl-C or SIGTERM. See that module for the
//! environment variables.

use std::process::ExitCode;

use klikit_webhook::receiver::{ReceiverError, serve_from_env};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match serve_from_env().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ ReceiverError::Config(_)) => {
            eprintln!("receiver: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("receiver: {error}");
            ExitCode::from(1)
        }
    }
}
