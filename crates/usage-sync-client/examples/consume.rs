//! Consume one unit for a user, then give it back as an app would when the
//! work it paid for failed.
//!
//!   cargo run --release --bin usage-sync -- serve     # in one shell
//!   cargo run -p usage-sync-client --example consume  # in another
//!
//! `USAGE_SYNC_URL` (default http://127.0.0.1:8080) and
//! `USAGE_SYNC_API_TOKEN` (if the service has one) point it elsewhere.

use usage_sync_client::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), usage_sync_client::Error> {
    let url = std::env::var("USAGE_SYNC_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let mut builder = Client::builder(url);
    if let Ok(token) = std::env::var("USAGE_SYNC_API_TOKEN") {
        builder = builder.api_token(token);
    }
    let usage = builder.build()?;
    let d = usage.consume("example-user", "premium", 1, None).await?;
    if !d.allowed {
        println!("over the limit: {:?} of {:?} used", d.used, d.limit);
        return Ok(());
    }
    println!(
        "allowed: {} used, {:?} remaining (request {})",
        d.used, d.remaining, d.request_id
    );
    // The work failed: give the unit back. Naming the user makes the
    // service refuse a request id that is not this user's.
    let back = usage.refund(&d.request_id, Some("example-user")).await?;
    match back {
        Some(r) => println!("refunded {} units", r.refunded),
        None => println!("refunded by an earlier attempt whose answer was lost"),
    }
    Ok(())
}
