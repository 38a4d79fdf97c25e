//! The `shoal` command line. Thin: parse flags, set up logging, hand off to
//! the command implementations in `cli/`, which call the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    shoal::runtime().expect("a tokio runtime").block_on(run())
}

async fn run() -> std::process::ExitCode {
    // Like other Unix tools, end quietly when stdout is closed early
    // (`shoal status | head`) instead of panicking on a broken pipe.
    #[cfg(unix)]
    // SAFETY: signal() only changes the process-wide disposition of
    // SIGPIPE; nothing in shoal relies on it being ignored.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("shoal={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
