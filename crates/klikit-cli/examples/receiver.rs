//! The reference Klikit webhook receiver, in Rust.
//!
//! Run with
//!
//! ```sh
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run -p klikit-cli --example receiver
//! ```
//!
//! Everything is in `klikit_cli::receiver`: it serves `POST
//! /webhooks/klikit` on `PORT` (default 8080), answers `200
//! {"status":"received"}` once the event is queued for a background worker,
//! and drains the worker on Ctrl-C or SIGTERM. See that module for the
//! environment variables.

use std::process::ExitCode;

use klikit_cli::receiver::{ReceiverError, serve_from_env};

#[tokio::main]
async fn main() -> ExitCode {
    klikit_cli::init_tracing();
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
