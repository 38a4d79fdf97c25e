//! The `shoal` command line. Thin: parse flags, call the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal::store::ObjectStore;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Serverless vector search on an S3 bucket"
)]
struct Cli {
    /// Where the index lives: s3://bucket/prefix, file:///dir, a path, or memory://name.
    #[arg(
        long,
        env = "SHOAL_BUCKET",
        default_value = "./shoal-data",
        global = true
    )]
    bucket: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the store enforces conditional writes (create-only and
    /// compare-and-swap), which every multi-writer guarantee depends on.
    Probe,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe => {
            let store = shoal::store::open(&cli.bucket)
                .await
                .with_context(|| format!("opening {}", cli.bucket))?;
            shoal::store::probe_conditional_writes(store.as_ref()).await?;
            println!(
                "{}: conditional writes are enforced ({} requests)",
                store.describe(),
                store.counts().total()
            );
        }
    }
    Ok(())
}
