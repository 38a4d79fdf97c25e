//! `shoal serve`: the HTTP API (see `shoal::http`) until SIGTERM or Ctrl-C,
//! then a graceful shutdown: in-flight requests finish, background
//! compaction stops, the instance record is removed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use shoal::api::{JoinOptions, RequestedSettings, Role};
use shoal::http::HttpOptions;
use shoal::{ErrorKind, OpenOptions};

use super::Ctx;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Anything but loopback needs an API key
    /// (SHOAL_API_KEY, or SHOAL_API_KEY_READ / SHOAL_API_KEY_WRITE) or
    /// --insecure-no-auth; use 0.0.0.0:8080 with a key inside a container.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Seconds between background compactions of written partitions (0: off).
    #[arg(long, default_value_t = 30)]
    pub compact_every: u64,
    /// How often a writer collects garbage in the background (objects no
    /// manifest needs, older than the config's gcGraceSeconds), e.g. 10m;
    /// 0 turns it off. Runs only with background compaction on.
    #[arg(long, env = "SHOAL_GC_EVERY", value_parser = humantime::parse_duration, default_value = "10m")]
    pub gc_every: Duration,
    /// Largest request body in bytes (413 above it).
    #[arg(long, default_value_t = shoal::http::DEFAULT_BODY_LIMIT)]
    pub max_body_bytes: usize,
    /// Searches run at once; one more is answered 429 with Retry-After
    /// (default: 4 per core).
    #[arg(long, env = "SHOAL_MAX_CONCURRENT_SEARCHES")]
    pub max_concurrent_searches: Option<usize>,
    /// A search running longer is abandoned and answered 503 (e.g. 500ms, 10s).
    #[arg(long, env = "SHOAL_QUERY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub query_timeout: Duration,
    /// A client must send a whole request head within this of connecting
    /// (or of the head's first byte on a kept-alive connection), or its
    /// connection is closed.
    #[arg(long, env = "SHOAL_HEADER_TIMEOUT", value_parser = positive_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// A request body must arrive whole within this, or it is answered 408
    /// and its connection closed.
    #[arg(long, env = "SHOAL_BODY_TIMEOUT", value_parser = positive_duration, default_value = "30s")]
    pub body_timeout: Duration,
    /// A kept-alive connection idle this long is closed (longer than a load
    /// balancer's own idle timeout, 60 s on AWS, so the balancer closes first).
    #[arg(long, env = "SHOAL_IDLE_TIMEOUT", value_parser = positive_duration, default_value = "75s")]
    pub idle_timeout: Duration,
    /// Connections served at once; one more is answered 503 with
    /// Retry-After and closed.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS", default_value_t = shoal::http::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Vector dimensions: with them a writer (or both) creates the
    /// index config when the bucket has none (create-only, so racing
    /// starters agree); an existing config must agree.
    #[arg(long, env = "SHOAL_DIMENSIONS")]
    pub dimensions: Option<u32>,
    /// Distance metric for a new config (default cosine).
    #[arg(long, value_enum, env = "SHOAL_METRIC")]
    pub metric: Option<super::MetricArg>,
    /// Hash partitions for a new config (default 8).
    #[arg(long, env = "SHOAL_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Serve a non-loopback address without an API key. Anyone who can
    /// reach the port can then read, write and delete; a warning is
    /// logged every minute.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Also serve the Amazon S3 Vectors API (POST /CreateIndex, /PutVectors,
    /// /QueryVectors, ...): vector buckets and indexes under prefixes of
    /// the bucket. Requests must be signed (SigV4) with a pair from
    /// SHOAL_S3V_CREDENTIALS=ACCESS_KEY:SECRET_KEY[,...] or the file named by
    /// SHOAL_S3V_CREDENTIALS_FILE, unless --insecure-no-auth. No index is
    /// then needed at the bucket's root.
    #[arg(long, env = "SHOAL_S3VECTORS")]
    pub s3vectors: bool,
    /// How fresh S3 Vectors reads (`GetVectors`, `ListVectors`,
    /// `QueryVectors`) are when the request does not say (AWS clients
    /// never do). `strong`: every write acknowledged before the call is
    /// seen, for one LIST request per call; `bounded`: at most 2 s old,
    /// checked in the background (about one LIST a second under load,
    /// none per call); `eventual`: what the server holds.
    #[arg(
        long,
        value_enum,
        env = "SHOAL_S3V_CONSISTENCY",
        default_value = "strong"
    )]
    pub s3vectors_consistency: super::ConsistencyArg,
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

/// `shoal serve`: opens the bucket (and the S3 Vectors API), refuses an
/// exposed address without authentication, serves until a shutdown signal,
/// then closes everything it opened.
pub(super) async fn run(ctx: &Ctx, a: ServeArgs) -> Result<()> {
    let every = (a.compact_every > 0).then(|| Duration::from_secs(a.compact_every));
    let db = open_db(ctx, &a, every).await?;
    let mut opts = http_options(&a);
    let s3v = open_s3vectors(ctx, &a, every).await?;
    opts.s3vectors = s3v.clone();
    let unauthenticated = check_exposure(&a, &opts, db.is_some(), s3v.as_deref()).await?;
    #[cfg(unix)]
    make_room_for(opts.max_connections);
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    if unauthenticated {
        warn_every_minute(addr);
    }
    let shutdown = shutdown_signal()?;
    announce(ctx, addr, db.as_ref(), s3v.is_some())?;
    shoal::http::serve(listener, db.clone(), opts, shutdown).await?;
    if let Some(svc) = &s3v {
        svc.close().await;
    }
    if let Some(db) = &db {
        db.close().await?;
    }
    eprintln!("shoal serve: stopped cleanly");
    Ok(())
}

/// Opens the index at the bucket's root (creating its config when allowed);
/// `None` when there is none and only the S3 Vectors API is served.
async fn open_db(ctx: &Ctx, a: &ServeArgs, every: Option<Duration>) -> Result<Option<shoal::Db>> {
    // Readers never create the config (in AWS their role cannot write
    // it); writers do when given the dimensions.
    let create = a.dimensions.is_some() && ctx.role != Some(Role::Reader);
    let opened = shoal::Db::open(
        &ctx.bucket,
        OpenOptions {
            cluster: JoinOptions {
                settings: RequestedSettings {
                    dimensions: a.dimensions,
                    distance_metric: a.metric.map(Into::into),
                    partition_count: a.partitions,
                    ..Default::default()
                },
                role: ctx.role,
                create,
                ..Default::default()
            },
            compact_every: every,
            gc_every: (!a.gc_every.is_zero()).then_some(a.gc_every),
            ..Default::default()
        },
    )
    .await;
    match opened {
        Ok(db) => Ok(Some(db)),
        // The S3 Vectors API needs no index at the root.
        Err(e) if e.kind() == ErrorKind::NotFound && a.s3vectors => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => anyhow::bail!(
            "{e}. Create it with `shoal --bucket {b} init --dimensions N`, or start a writer \
             with `shoal --bucket {b} serve --dimensions N` (SHOAL_DIMENSIONS=N; also \
             --metric / SHOAL_METRIC and --partitions / SHOAL_PARTITIONS){reader}",
            b = ctx.bucket,
            reader = if ctx.role == Some(Role::Reader) {
                "; readers never create it"
            } else {
                ""
            }
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot open {}", ctx.bucket))),
    }
}

/// A duration flag that must be above zero (e.g. 300ms, 10s, 2m): a zero
/// timeout would close every connection at once.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// The HTTP server's limits from the flags (body size and timeouts, query
/// timeout, searches and connections at once).
fn http_options(a: &ServeArgs) -> HttpOptions {
    let mut opts = HttpOptions {
        body_limit: a.max_body_bytes,
        query_timeout: a.query_timeout,
        header_timeout: a.header_timeout,
        body_timeout: a.body_timeout,
        idle_timeout: a.idle_timeout,
        max_connections: a.max_connections.max(1),
        ..HttpOptions::default()
    };
    if let Some(n) = a.max_concurrent_searches {
        opts.max_searches = n.max(1);
    }
    opts
}

/// The S3 Vectors API service with `--s3vectors` (which needs credentials
/// unless `--insecure-no-auth`), `None` without it.
async fn open_s3vectors(
    ctx: &Ctx,
    a: &ServeArgs,
    every: Option<Duration>,
) -> Result<Option<Arc<shoal::s3vectors::Service>>> {
    if !a.s3vectors {
        return Ok(None);
    }
    let credentials = shoal::s3vectors::Credentials::from_env().map_err(anyhow::Error::msg)?;
    if credentials.is_empty() && !a.insecure_no_auth {
        anyhow::bail!(
            "--s3vectors needs credentials to check request signatures: set \
             SHOAL_S3V_CREDENTIALS=ACCESS_KEY:SECRET_KEY (several: comma-separated) or \
             SHOAL_S3V_CREDENTIALS_FILE, and give clients the same pair; or pass \
             --insecure-no-auth to accept unsigned requests"
        );
    }
    let mut s = shoal::s3vectors::S3VectorsOptions::new(ctx.bucket.clone());
    s.credentials = (!credentials.is_empty()).then_some(credentials);
    s.role = ctx.role;
    s.partitions = a.partitions;
    s.compact_every = every;
    s.gc_every = (!a.gc_every.is_zero()).then_some(a.gc_every);
    s.default_consistency = a.s3vectors_consistency.into();
    let svc = shoal::s3vectors::Service::open(s)
        .await
        .with_context(|| format!("cannot open {} for the S3 Vectors API", ctx.bucket))?;
    let svc = Arc::new(svc);
    // Runs until the service is dropped.
    drop(svc.spawn_sweeper(shoal::s3vectors::SWEEP_EVERY));
    Ok(Some(svc))
}

/// Whether some route would answer without a key or signature on a
/// non-loopback address; refuses that unless `--insecure-no-auth`.
async fn check_exposure(
    a: &ServeArgs,
    opts: &HttpOptions,
    has_db: bool,
    s3v: Option<&shoal::s3vectors::Service>,
) -> Result<bool> {
    // Checked before binding: an open port is never exposed, not even
    // for a moment.
    let exposed = tokio::net::lookup_host(&a.listen)
        .await
        .with_context(|| format!("cannot resolve the listen address {}", a.listen))?
        .any(|addr| !addr.ip().is_loopback());
    // Open means some route would answer without a key or signature.
    let open = (opts.keys.is_open() && has_db) || s3v.is_some_and(|s| !s.authenticates());
    if open && exposed && !a.insecure_no_auth {
        anyhow::bail!(
            "refusing to serve {} without an API key: anyone who can reach it could read, \
             write and delete. Set SHOAL_API_KEY (or SHOAL_API_KEY_READ and \
             SHOAL_API_KEY_WRITE), listen on 127.0.0.1, or pass --insecure-no-auth",
            a.listen
        );
    }
    Ok(open && exposed)
}

/// Raises the soft limit on open descriptors (toward the hard one) when it
/// leaves too little room for `connections`: past it accepting fails and
/// even `/healthz` goes unanswered. systemd's default soft limit (1,024)
/// is no more than the default `--max-connections`. Warns when the hard
/// limit is too low too.
#[cfg(unix)]
fn make_room_for(connections: usize) {
    // Besides the connections: the listener, the store's own connections,
    // files, and up to 64 connections being refused.
    const OTHERS: usize = 256;
    let want =
        libc::rlim_t::try_from(connections.saturating_add(OTHERS)).unwrap_or(libc::rlim_t::MAX);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= want {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: want.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given; a soft limit
    // up to the hard one is the process's to set.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    if !ok || raised.rlim_cur < want {
        let now = if ok { raised.rlim_cur } else { limit.rlim_cur };
        eprintln!(
            "shoal serve: WARNING: the open-file limit is {now}; --max-connections {connections} \
             needs about {want}. Raise it (ulimit -n, LimitNOFILE=) or lower --max-connections, \
             or a flood of connections can leave no descriptor to accept /healthz with"
        );
    }
}

/// Logs a warning every minute that `addr` is served without authentication.
fn warn_every_minute(addr: SocketAddr) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            eprintln!(
                "shoal serve: WARNING: {addr} has no API key (--insecure-no-auth): \
                 anyone who can reach it can read, write and delete"
            );
        }
    });
}

/// Prints the one line on stdout that scripts (and tests) wait for, and flushes it.
fn announce(ctx: &Ctx, addr: SocketAddr, db: Option<&shoal::Db>, s3v: bool) -> Result<()> {
    let what = match db {
        Some(db) => format!("{} as {}", db.describe(), db.role()),
        None => format!("{}, S3 Vectors API only", ctx.bucket),
    };
    let api = if s3v && db.is_some() {
        "; S3 Vectors API on"
    } else {
        ""
    };
    println!("shoal serve: listening on http://{addr} ({what}{api})");
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(())
}
