//! `shoal serve`: the HTTP API (see `shoal::http`) until SIGTERM or Ctrl-C,
//! then a graceful shutdown: in-flight requests finish, background
//! compaction stops, the instance record is removed.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use shoal::http::HttpOptions;
use shoal::OpenOptions;

use super::Ctx;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (use 0.0.0.0:8080 inside a container).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Seconds between background compactions of written partitions (0: off).
    #[arg(long, default_value_t = 30)]
    pub compact_every: u64,
    /// Largest request body in bytes (413 above it).
    #[arg(long, default_value_t = shoal::http::DEFAULT_BODY_LIMIT)]
    pub max_body_bytes: usize,
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called (before the server announces itself), so a signal that arrives
/// right after startup is never lost to the default action.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    })
}

pub(super) async fn run(ctx: &Ctx, a: ServeArgs) -> Result<()> {
    let every = (a.compact_every > 0).then(|| Duration::from_secs(a.compact_every));
    let db = ctx
        .open(OpenOptions {
            role: ctx.role,
            create: false,
            compact_every: every,
            ..Default::default()
        })
        .await?;
    let role = db.role();
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown_signal()?;
    // One line on stdout that scripts (and tests) can wait for.
    println!(
        "shoal serve: listening on http://{addr} ({} as {role})",
        db.describe()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let opts = HttpOptions {
        body_limit: a.max_body_bytes,
        ..HttpOptions::default()
    };
    shoal::http::serve(listener, db.clone(), opts, shutdown).await?;
    db.close().await?;
    eprintln!("shoal serve: stopped cleanly");
    Ok(())
}
