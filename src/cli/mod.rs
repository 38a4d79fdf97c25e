//! The `shoal` command line: flag definitions and dispatch. Each command
//! is a thin layer over the library; output is a table or, with `--json`,
//! one JSON document on stdout. Errors go to stderr with exit code 1
//! (2 for usage errors, from clap).

mod admin;
mod bench;
mod demo;
mod ingest;
mod query;
mod serve;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use shoal::api::{Consistency, JoinOptions, Metric, Role};
use shoal::{Db, ErrorKind, OpenOptions};

pub(crate) const DEFAULT_BUCKET: &str = "./shoal-data";

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Serverless vector search whose only shared state is an S3 bucket",
    long_about = "Serverless vector search whose only shared state is an S3 bucket.\n\n\
        Point any number of shoal processes at one bucket (or a local directory): writers \
        commit immutable segments with conditional writes, readers search every partition \
        and merge the top-k.\n\nStart with `shoal demo`."
)]
pub(crate) struct Cli {
    /// Where the index lives: s3://bucket/prefix, file:///abs/dir, a path, or memory://name.
    /// Defaults to the local directory ./shoal-data (no server needed).
    #[arg(long, env = "SHOAL_BUCKET", global = true)]
    pub bucket: Option<String>,
    /// Role of this process: reader, writer or both (default: detected; see ARCHITECTURE.md).
    #[arg(long, env = "BRAINY_ROLE", global = true, value_enum)]
    pub role: Option<RoleArg>,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log more (-v: info, -vv: debug, -vvv: trace); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    Reader,
    Writer,
    Both,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Reader => Role::Reader,
            RoleArg::Writer => Role::Writer,
            RoleArg::Both => Role::Both,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum MetricArg {
    Cosine,
    Euclidean,
    Dot,
}

impl From<MetricArg> for Metric {
    fn from(m: MetricArg) -> Metric {
        match m {
            MetricArg::Cosine => Metric::Cosine,
            MetricArg::Euclidean => Metric::Euclidean,
            MetricArg::Dot => Metric::Dot,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ConsistencyArg {
    Eventual,
    Bounded,
    Strong,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Consistency {
        match c {
            ConsistencyArg::Eventual => Consistency::Eventual,
            ConsistencyArg::Bounded => Consistency::Bounded,
            ConsistencyArg::Strong => Consistency::Strong,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create the index config in the bucket (refuses to contradict an existing one).
    Init(InitArgs),
    /// Ingest vectors from JSONL, .npy or .fvecs files (streaming, with a progress bar).
    Ingest(ingest::IngestArgs),
    /// Search for the nearest neighbours of a vector.
    Search(query::SearchArgs),
    /// Print one record by id.
    Get {
        /// The record id.
        id: String,
        /// Read-your-writes: revalidate the partition first.
        #[arg(long, value_enum, default_value = "strong")]
        consistency: ConsistencyArg,
    },
    /// Delete records by id (deleting an absent id is fine).
    Delete {
        /// Ids to delete.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show or change the index config (`config show`, `config set
    /// gcGraceSeconds=1800 index.nprobe=12`).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show the config, live instances, partitions and request counters.
    Status {
        /// Also count live and dead records per partition (reads every
        /// segment, like a cold reader's warm-up).
        #[arg(long)]
        live: bool,
    },
    /// Read every manifest and segment, check checksums, counts and references.
    /// Exits with 1 if any problem is found (orphans alone are not problems).
    Verify,
    /// Compact partitions: merge segments, drop dead records, build ANN indexes.
    Compact {
        /// Compact even partitions the policy would leave alone.
        #[arg(long)]
        force: bool,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Delete objects no manifest needs any more (older than the grace period),
    /// and records of instances that stopped heartbeating.
    Gc {
        /// Report what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Grace period in seconds (default: the index's gcGraceSeconds, 900 unless
        /// configured; less is refused unless --unsafe-grace).
        #[arg(long)]
        grace_seconds: Option<u64>,
        /// Accept a grace period under the index's gcGraceSeconds (or under 300 s).
        /// Only safe when no writer or reader is running against the bucket.
        #[arg(long)]
        unsafe_grace: bool,
    },
    /// Rebuild a lost partition manifest from the segments under the partition.
    /// Writes only when the commit order is certain (else lists what is not),
    /// and never over an existing manifest. With --shard KEY: rebuild a
    /// damaged index shard from its readable rows (or drop it if its head is
    /// unreadable), listing every id lost.
    Repair {
        /// The partition whose manifest is missing.
        #[arg(required_unless_present = "shard", conflicts_with = "shard")]
        partition: Option<u32>,
        /// The damaged index shard to rebuild (its key, as `shoal verify`
        /// or a failed search names it).
        #[arg(long)]
        shard: Option<String>,
        /// Show the manifest that would be written, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the creation order even where the commit order is uncertain,
        /// and leave unreadable segments out.
        #[arg(long)]
        force: bool,
    },
    /// Check that the store enforces conditional writes (create-only and
    /// compare-and-swap), which every multi-writer guarantee depends on.
    Probe,
    /// Benchmark ingest, compaction, warm and cold queries on a TEXMEX dataset.
    Bench(bench::BenchArgs),
    /// Serve the HTTP API (upsert, delete, search, records, status, health, metrics).
    Serve(serve::ServeArgs),
    /// Run shoal end to end on a small real dataset shipped with it: ingest, search, recall.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the config stored in the bucket (JSON).
    Show,
    /// Change settings: `KEY=VALUE` pairs, KEY a JSON path in the config's
    /// settings (embeddingModel, instanceTimeoutSeconds, gcGraceSeconds,
    /// index.nprobe, index.kind, ...), VALUE JSON (bare words are strings).
    /// Compare-and-swap; partitionCount, dimensions and distanceMetric are
    /// refused once data exists. Running instances keep their settings
    /// until they restart.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        changes: Vec<String>,
    },
}

#[derive(Args)]
pub(crate) struct InitArgs {
    /// Vector dimensions (1..=65536).
    #[arg(long)]
    pub dimensions: u32,
    /// Distance metric.
    #[arg(long, value_enum, default_value = "cosine")]
    pub metric: MetricArg,
    /// Number of hash partitions (1..=1999); cannot change later.
    #[arg(long, default_value_t = shoal::api::DEFAULT_PARTITION_COUNT)]
    pub partitions: u32,
    /// Name of the embedding model, recorded so every instance agrees.
    #[arg(long)]
    pub model: Option<String>,
    /// A metadata key searchable as full text (BM25), with its analyzer:
    /// `KEY` (standard analyzer) or `KEY=ANALYZER`, ANALYZER one of
    /// standard, en, fr, es, pt, it, de, nl, zh, ja, ko. Repeatable.
    #[arg(long = "text-field", value_name = "KEY[=ANALYZER]")]
    pub text_fields: Vec<String>,
}

/// What every command needs: where the bucket is and how to talk.
pub(crate) struct Ctx {
    pub bucket: String,
    pub json: bool,
    pub role: Option<Role>,
}

impl Ctx {
    /// Opens the index read-only (registers nothing), or says how to
    /// create one.
    pub(crate) async fn observe(&self) -> Result<Db> {
        self.open(OpenOptions {
            cluster: JoinOptions {
                role: self.role,
                ..Default::default()
            },
            ..OpenOptions::observer()
        })
        .await
    }

    /// Joins the existing index as a writer (probe, register, heartbeat),
    /// or says how to create one.
    pub(crate) async fn join_writer(&self) -> Result<Db> {
        self.open(OpenOptions {
            cluster: JoinOptions {
                role: Some(self.role.unwrap_or(Role::Writer)),
                create: false,
                ..Default::default()
            },
            ..Default::default()
        })
        .await
    }

    /// Opens with `opts`; a missing index gets the command that creates it.
    pub(crate) async fn open(&self, opts: OpenOptions) -> Result<Db> {
        match Db::open(&self.bucket, opts).await {
            Ok(db) => Ok(db),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(anyhow::anyhow!(
                "{e}: create one with `shoal --bucket {} init --dimensions N`",
                self.bucket
            )),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot open {}", self.bucket))),
        }
    }

    /// Prints `value` as JSON (for `--json`).
    pub(crate) fn print_json<T: serde::Serialize>(&self, value: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

pub(crate) async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        bucket: cli.bucket.clone().unwrap_or_else(|| DEFAULT_BUCKET.into()),
        json: cli.json,
        role: cli.role.map(Role::from),
    };
    match cli.command {
        Command::Init(a) => admin::init(&ctx, a).await,
        Command::Config(c) => admin::config(&ctx, c).await,
        Command::Repair {
            shard: Some(key),
            dry_run,
            ..
        } => admin::repair_shard(&ctx, &key, dry_run).await,
        Command::Repair {
            partition,
            dry_run,
            force,
            ..
        } => admin::repair(&ctx, partition.unwrap_or_default(), dry_run, force).await,
        Command::Ingest(a) => ingest::run(&ctx, a).await,
        Command::Search(a) => query::search(&ctx, a).await,
        Command::Get { id, consistency } => query::get(&ctx, &id, consistency.into()).await,
        Command::Delete { ids } => query::delete(&ctx, &ids).await,
        Command::Status { live } => admin::status(&ctx, live).await,
        Command::Verify => admin::verify(&ctx).await,
        Command::Compact { force, partition } => admin::compact(&ctx, force, partition).await,
        Command::Gc {
            dry_run,
            grace_seconds,
            unsafe_grace,
        } => admin::gc(&ctx, dry_run, grace_seconds, unsafe_grace).await,
        Command::Probe => admin::probe(&ctx).await,
        Command::Serve(a) => serve::run(&ctx, a).await,
        Command::Bench(a) => bench::run(&ctx, a).await,
        Command::Demo(a) => demo::run(cli.bucket.is_some().then_some(ctx), a).await,
    }
}
