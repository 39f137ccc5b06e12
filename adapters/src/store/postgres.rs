//! The PostgreSQL store: every store of every server instance in one table of one database, so that
//! several stateless `streamkit serve` instances can share their data.
//!
//! # Layout
//!
//! One schema (`public` unless configured), created and migrated at start under an advisory lock, with
//! a versioned migration table:
//!
//! ```sql
//! CREATE TABLE streamkit_migrations (version integer PRIMARY KEY, description text NOT NULL,
//!                                    applied_at timestamptz NOT NULL DEFAULT now());
//! CREATE TABLE streamkit_kv (store_id uuid NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
//!                            PRIMARY KEY (store_id, key));            -- migration 1
//! CREATE TABLE streamkit_bus_payloads (...);                          -- migration 2 (Postgres bus)
//! ```
//!
//! Stores are isolated by `store_id`: every statement is bounded to one store, and scans run on the
//! primary key (`bytea` compares bytewise, as the ordered key-value model requires).
//!
//! # Commits
//!
//! The commits of all stores share one queue and a few committer tasks ([`PgConfig::committers`]).
//! A committer takes the first waiting request and every request queued behind it (up to
//! [`PgConfig::max_group_batches`] / [`PgConfig::max_group_bytes`]) and runs them in **one
//! transaction**, whatever their stores (it is one database): under load, many produces share one
//! round trip and one WAL flush. Inside the transaction:
//!
//! 1. the rows of every precondition key of the group are read with `SELECT … FOR UPDATE`, in key
//!    order (row locks: nobody can change them until the transaction ends, and a consistent order
//!    keeps two committers from deadlocking each other);
//! 2. the batches are decided in order in memory (a batch's preconditions see the effects of the
//!    batches before it; a failed one is skipped and reported as a conflict), which gives the net
//!    change of every key;
//! 3. the changes are written with three set-based statements (`unnest` arrays; keys in order), and
//!    the transaction commits.
//!
//! A precondition on an **absent** key cannot lock a row. Such a key is written with a plain `INSERT`:
//! if another transaction (another instance) inserted it meanwhile, the insert fails with a unique
//! violation, and the whole group is retried from step 1, where the precondition now sees the row and
//! the batch conflicts. Two instances racing on one segment therefore leave exactly 1..N, and the loser
//! gets the sequence error, as on one node. Deadlocks and serialisation failures are retried the same
//! way (at most [`PgConfig::commit_retries`] times).
//!
//! **One request's failure stays its own.** A group of several requests that fails with an error
//! caused by its data rather than by the database (SQLSTATE classes 21 cardinality violation, 22 data
//! exception, 23 integrity constraint violation, 54 program limit exceeded: say a key over the btree
//! index limit of 2704 bytes) is committed again one request at a time, in the group's order, each in
//! a transaction of its own: only the requests that fail alone get the error, the others commit as if
//! the culprit had never been in their group ([`PgStats::isolation_retries`] counts such groups). An
//! error of the database itself (unreachable, out of resources, shutting down) or a `COMMIT` whose
//! outcome is unknown fails the whole group: trying its requests one by one could not help, and a
//! commit that may have been applied must not be repeated blindly.
//!
//! # Errors
//!
//! What clients read names the kind of failure and nothing else: `database error: <SQLSTATE class>
//! (SQLSTATE <code>)`, e.g. `database error: program limit exceeded (SQLSTATE 54000)`, or `database
//! unavailable: …` when the database cannot be reached. The server's message (which may quote keys and
//! values) and the connection string never reach a client; the log gets the full cause (code,
//! message, detail, hint, table, constraint) with the ids of the stores concerned, at `warn`.
//!
//! # Connections
//!
//! A deadpool pool ([`PgConfig::pool_size`] connections) is shared by every store, reads and commits
//! alike; statements are prepared once per connection and cached. A connection found closed when it
//! is taken from the pool (the database restarted) is replaced. An operation whose connection breaks
//! while it runs fails with `database unavailable: …` (a commit that broke while `COMMIT` was in
//! flight may or may not have been applied: the producer's retry resolves it through the sequence
//! preconditions); later operations get fresh connections.
//!
//! The driver runs on the dedicated I/O runtime (see `sidecar`), so this store works the same under
//! tokio, smol and async-std. TLS to the database is not supported (use a local socket, a private
//! network or a TLS-terminating proxy).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TryRecvError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, TimeoutType};
use futures_channel::oneshot;
use streamkit_proto::storage::{
    CommitOutcome, KvError, KvPair, OrderedKv, ScanRange, StorageOp, StorageResult, WriteBatch,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::worker::{CommitObserver, CommitReport, STORE_CLOSED};
use crate::log_limit::limited_log;
use crate::sidecar;

/// The schema version this build writes; a database migrated further by a newer server is refused.
pub const SCHEMA_VERSION: i32 = 2;

/// The migrations, in order: (version, description, statements with `{schema}` placeholders).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "ordered key-value table of all stores",
        "CREATE TABLE {schema}.streamkit_kv (
             store_id uuid NOT NULL,
             key bytea NOT NULL,
             value bytea NOT NULL,
             PRIMARY KEY (store_id, key)
         )",
    ),
    (
        2,
        "payloads of Postgres-bus messages too large for NOTIFY",
        "CREATE TABLE {schema}.streamkit_bus_payloads (
             id bigserial PRIMARY KEY,
             created_at timestamptz NOT NULL DEFAULT now(),
             payload text NOT NULL
         )",
    ),
];

/// How to reach the database and how to use it. Its `Debug` form never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// Connection string: `postgres://user[:password]@host[:port]/database[?…]` or the key-value form
    /// (`host=… user=… dbname=…`), as tokio-postgres parses it.
    pub url: String,
    /// Schema holding the tables (default `public`); created when missing. Deployments sharing one
    /// database stay apart by using different schemas.
    pub schema: String,
    /// Connections in the pool, shared by every store, reads and commits (default 16).
    pub pool_size: usize,
    /// Transactions committing at once (default 4; at most `pool_size`).
    pub committers: usize,
    /// Commit requests waiting for a committer at most; producers wait beyond that (default 4096).
    pub commit_queue: usize,
    /// A group stops taking requests once it holds this many batches (default 1024).
    pub max_group_batches: usize,
    /// A group stops taking requests once its batches write this many bytes (default 16 MiB).
    pub max_group_bytes: usize,
    /// Group retries after a deadlock, serialisation failure or lost insert race (default 8).
    pub commit_retries: u32,
    /// Time to establish a connection, and to wait for a free one (default 5 s).
    pub connect_timeout: Duration,
}

// By hand rather than derived: the connection string may hold a password, and configurations end up
// in logs. tokio-postgres's parsed form shows the password as `_`.
impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.parse::<tokio_postgres::Config>();
        let mut debug = f.debug_struct("PgConfig");
        match &url {
            Ok(parsed) => debug.field("url", parsed),
            Err(_) => debug.field("url", &"<invalid, not shown>"),
        };
        debug
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("committers", &self.committers)
            .field("commit_queue", &self.commit_queue)
            .field("max_group_batches", &self.max_group_batches)
            .field("max_group_bytes", &self.max_group_bytes)
            .field("commit_retries", &self.commit_retries)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl PgConfig {
    /// Defaults for everything but the connection string.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "public".to_owned(),
            pool_size: 16,
            committers: 4,
            commit_queue: 4096,
            max_group_batches: 1024,
            max_group_bytes: 16 << 20,
            commit_retries: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The same configuration with another schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
}

/// Counters of one database since it was connected (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgStats {
    /// Commit requests executed.
    pub commit_requests: u64,
    /// Transactions that committed or conflicted (one per group, plus one per request of a group
    /// committed one by one).
    pub transactions: u64,
    /// Transactions (of a group, or of a request committed alone) that failed after their retries.
    pub failed_transactions: u64,
    /// Group attempts repeated (deadlock, serialisation failure, lost insert race, broken connection).
    pub retries: u64,
    /// Groups of several requests that failed because of some of their batches (a data, constraint or
    /// program-limit error such as a key too long for the index) and were committed again one request
    /// at a time, so that only the requests failing alone got the error.
    pub isolation_retries: u64,
    /// Batches written.
    pub batches_committed: u64,
    /// Batches skipped because a precondition did not hold.
    pub batches_conflicted: u64,
    /// Key and value bytes of the batches written.
    pub bytes_committed: u64,
    /// Gets and scans executed.
    pub reads: u64,
    /// Most batches in one transaction.
    pub largest_group: u64,
}

#[derive(Default)]
struct Counters {
    commit_requests: AtomicU64,
    transactions: AtomicU64,
    failed_transactions: AtomicU64,
    retries: AtomicU64,
    isolation_retries: AtomicU64,
    batches_committed: AtomicU64,
    batches_conflicted: AtomicU64,
    bytes_committed: AtomicU64,
    reads: AtomicU64,
    largest_group: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// The SQL of every statement, with the schema filled in.
#[derive(Debug)]
struct Statements {
    get: String,
    usage: String,
    scan_forward: String,
    scan_backward: String,
    /// Scans with a byte bound (`$5`): the running size of the rows decides where the answer stops, so
    /// rows past the bound are never sent.
    scan_forward_bounded: String,
    scan_backward_bounded: String,
    lock_rows: String,
    insert: String,
    upsert: String,
    delete: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let kv = format!("{}.streamkit_kv", quote_ident(schema));
        let scan = |order: &str| {
            format!(
                "SELECT key, value FROM {kv} WHERE store_id = $1 AND key >= $2 AND key < $3 \
                 ORDER BY key {order} LIMIT $4"
            )
        };
        // `octet_length` of a stored value reads its size without detoasting it. The first row is always
        // returned (see `ScanRange::max_bytes`).
        let bounded = |order: &str| {
            format!(
                "SELECT key, value FROM (\
                   SELECT key, value, row_number() OVER w AS n, \
                     sum(octet_length(key) + octet_length(value)) OVER w AS upto \
                   FROM ({}) AS s WINDOW w AS (ORDER BY key {order} ROWS UNBOUNDED PRECEDING)\
                 ) AS t WHERE n = 1 OR upto - (octet_length(key) + octet_length(value)) < $5 \
                 ORDER BY key {order}",
                scan(order)
            )
        };
        Self {
            get: format!("SELECT value FROM {kv} WHERE store_id = $1 AND key = $2"),
            usage: format!(
                "SELECT COALESCE(sum(octet_length(key) + octet_length(value)), 0)::int8 FROM {kv} WHERE store_id = $1"
            ),
            scan_forward: scan("ASC"),
            scan_backward: scan("DESC"),
            scan_forward_bounded: bounded("ASC"),
            scan_backward_bounded: bounded("DESC"),
            lock_rows: format!(
                "SELECT t.store_id, t.key, t.value FROM {kv} t \
                 JOIN unnest($1::uuid[], $2::bytea[]) AS p(store_id, key) \
                 ON t.store_id = p.store_id AND t.key = p.key \
                 ORDER BY t.store_id, t.key FOR UPDATE OF t"
            ),
            insert: format!(
                "INSERT INTO {kv} (store_id, key, value) \
                 SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bytea[])"
            ),
            upsert: format!(
                "INSERT INTO {kv} (store_id, key, value) \
                 SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) \
                 ON CONFLICT (store_id, key) DO UPDATE SET value = EXCLUDED.value"
            ),
            delete: format!(
                "DELETE FROM {kv} t USING unnest($1::uuid[], $2::bytea[]) AS d(store_id, key) \
                 WHERE t.store_id = d.store_id AND t.key = d.key"
            ),
        }
    }
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier for any schema name.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

type Reply<T> = oneshot::Sender<Result<T, KvError>>;

struct CommitRequest {
    store: Uuid,
    batches: Vec<WriteBatch>,
    reply: Reply<Vec<CommitOutcome>>,
}

struct Shared {
    pool: Pool,
    sql: Statements,
    config: PgConfig,
    commits: Sender<CommitRequest>,
    counters: Counters,
    observer: Mutex<Option<CommitObserver>>,
}

/// A connected database: the pool, the schema and the committers. Cheap to clone; the committers stop
/// once every clone and every [`PgStore`] is gone.
#[derive(Clone)]
pub struct PgDatabase {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDatabase")
            .field("schema", &self.shared.config.schema)
            .field("pool", &self.shared.pool.status())
            .field("queued_commits", &self.shared.commits.len())
            .finish_non_exhaustive()
    }
}

// Errors. Clients see a `KvError` text (the core sends it with the failed stream): it names the kind of
// failure (the SQLSTATE class, or `database unavailable`) but never the server's message, which can
// quote keys, values, table and constraint names, nor anything of the connection string. The full
// cause (code, message, detail, hint, table, constraint) goes to the log where the error is handled.

/// The name of a SQLSTATE class (the first two characters of the code), as the PostgreSQL manual
/// (appendix A) names it; `None` for the classes this store has no name for.
fn sqlstate_class(code: &str) -> Option<&'static str> {
    Some(match code.get(..2)? {
        "08" => "connection exception",
        "0A" => "feature not supported",
        "21" => "cardinality violation",
        "22" => "data exception",
        "23" => "integrity constraint violation",
        "25" => "invalid transaction state",
        "28" => "invalid authorization specification",
        "3D" => "invalid catalog name",
        "3F" => "invalid schema name",
        "40" => "transaction rollback",
        "42" => "syntax error or access rule violation",
        "53" => "insufficient resources",
        "54" => "program limit exceeded",
        "55" => "object not in prerequisite state",
        "57" => "operator intervention",
        "58" => "system error",
        "XX" => "internal error",
        _ => return None,
    })
}

/// `{prefix}: {class name} (SQLSTATE {code})`, or `{prefix} (SQLSTATE {code})` for an unknown class.
fn sqlstate_text(prefix: &str, code: &str) -> String {
    match sqlstate_class(code) {
        Some(class) => format!("{prefix}: {class} (SQLSTATE {code})"),
        None => format!("{prefix} (SQLSTATE {code})"),
    }
}

/// SQLSTATE classes of errors a statement raises because of the data it was given (a key too long
/// for the index, an invalid value, a violated constraint): the same batches fail again, other
/// batches would not.
const BATCH_ERROR_CLASSES: [&str; 4] = [
    "21", // cardinality violation
    "22", // data exception
    "23", // integrity constraint violation (the unique violation of a lost insert race is retried first)
    "54", // program limit exceeded (e.g. 54000: an index row over the btree limit of 2704 bytes)
];

/// Errors after which the whole group is repeated: nothing of it was committed, and a new attempt
/// decides its batches again.
const RETRYABLE: [SqlState; 3] =
    [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::UNIQUE_VIOLATION];

/// The full cause of an error for the log: every error of the source chain, a server error with its
/// severity, code, message, detail, hint, context and the object it is about.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let mut next = Some(e);
    while let Some(e) = next {
        // tokio-postgres's "db error" only announces the server error that follows as its source.
        if e.downcast_ref::<tokio_postgres::Error>().is_some_and(|e| e.as_db_error().is_some()) {
            next = e.source();
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        match e.downcast_ref::<tokio_postgres::error::DbError>() {
            Some(db) => {
                let _ = write!(text, "{} {}: {}", db.severity(), db.code().code(), db.message());
                let fields = [
                    ("detail", db.detail()),
                    ("hint", db.hint()),
                    ("where", db.where_()),
                    ("schema", db.schema()),
                    ("table", db.table()),
                    ("column", db.column()),
                    ("constraint", db.constraint()),
                    ("datatype", db.datatype()),
                ];
                for (name, value) in fields {
                    if let Some(value) = value {
                        let _ = write!(text, "; {name}: {value}");
                    }
                }
            }
            None => {
                let _ = write!(text, "{e}");
            }
        }
        next = e.source();
    }
    text
}

/// What a failed operation means for its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailureKind {
    /// Nothing was committed and a new attempt may succeed: deadlock, serialisation failure, lost
    /// insert race, or a connection that broke before `COMMIT` was sent (the transaction rolled back).
    Retry,
    /// A statement failed because of the batches it was given (see [`BATCH_ERROR_CLASSES`]): the
    /// requests of a group are worth committing one by one, so that only the culprit fails.
    Batch,
    /// The database cannot serve the request (unreachable, out of resources, shutting down, refusing
    /// access...): repeating requests one by one would not help.
    Database,
    /// The connection broke while `COMMIT` was in flight: applied or not, nobody knows, so it must not
    /// be repeated blindly (the producer's retry resolves it through the sequence preconditions).
    OutcomeUnknown,
}

/// What an error the server answered with means (see [`FailureKind`]).
fn server_error_kind(code: &SqlState) -> FailureKind {
    if RETRYABLE.contains(code) {
        FailureKind::Retry
    } else if BATCH_ERROR_CLASSES.iter().any(|class| code.code().starts_with(class)) {
        FailureKind::Batch
    } else {
        FailureKind::Database
    }
}

/// A failed database operation: what its callers are told and, for the log, the full cause.
#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    error: KvError,
    cause: String,
}

impl Failure {
    /// A driver error; `committing` when it came from `COMMIT` itself.
    fn driver(e: &tokio_postgres::Error, committing: bool) -> Self {
        let (kind, text) = match e.code() {
            Some(code) => (server_error_kind(code), sqlstate_text("database error", code.code())),
            // No answer to COMMIT: the outcome is unknown.
            None if committing => {
                (FailureKind::OutcomeUnknown, format!("database unavailable: commit outcome unknown ({e})"))
            }
            // A closed connection rolled its transaction back: safe to repeat on another one.
            None if e.is_closed() => (FailureKind::Retry, format!("database unavailable: {e}")),
            // tokio-postgres's own texts ("error communicating with the server", "timeout waiting for
            // server"...) name neither the host nor the credentials; the cause chain is for the log.
            None => (FailureKind::Database, format!("database unavailable: {e}")),
        };
        Self { kind, error: KvError(text), cause: cause(e) }
    }

    /// No connection could be taken from the pool.
    fn pool(e: &PoolError) -> Self {
        let text = match e {
            PoolError::Timeout(TimeoutType::Wait) => {
                "database unavailable: no free connection in time".to_owned()
            }
            PoolError::Timeout(TimeoutType::Create) => {
                "database unavailable: timed out connecting".to_owned()
            }
            PoolError::Timeout(TimeoutType::Recycle) => {
                "database unavailable: timed out checking a pooled connection".to_owned()
            }
            // The server refused the connection (authentication, unknown database, too many clients).
            PoolError::Backend(e) => match e.code() {
                Some(code) => sqlstate_text("database unavailable", code.code()),
                None => format!("database unavailable: {e}"),
            },
            PoolError::Closed => "database unavailable: connection pool closed".to_owned(),
            _ => "database unavailable: connection pool error".to_owned(),
        };
        Self { kind: FailureKind::Database, error: KvError(text), cause: cause(e) }
    }

    /// Logs the failure of `operation` with its full cause and the stores it failed, and returns the
    /// error for the callers.
    fn logged(self, operation: &str, stores: &[Uuid]) -> KvError {
        // A client whose requests fail (a batch the database refuses) causes one failure per request.
        limited_log!(
            warn,
            [operation, store_ids = %StoreIds(stores), error = %self.error, cause = %self.cause],
            "PostgreSQL operation failed"
        );
        self.error
    }
}

/// Store ids for the log: comma-separated, each once, in order of first appearance.
struct StoreIds<'a>(&'a [Uuid]);

impl std::fmt::Display for StoreIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, store) in self.0.iter().enumerate() {
            if self.0[..i].contains(store) {
                continue;
            }
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{store}")?;
        }
        Ok(())
    }
}

impl PgDatabase {
    /// Connects (checking that the database answers), creates or migrates the schema, and starts the
    /// committers. Awaitable from any runtime.
    pub async fn connect(config: PgConfig) -> Result<Self, KvError> {
        sidecar::run(Self::connect_on_io(config)).await.map_err(KvError)?
    }

    /// [`PgDatabase::connect`] for synchronous callers (never from an async executor's thread).
    pub fn connect_blocking(config: PgConfig) -> Result<Self, KvError> {
        sidecar::block_on(Self::connect(config))
    }

    async fn connect_on_io(config: PgConfig) -> Result<Self, KvError> {
        let pg: tokio_postgres::Config = config.url.parse().map_err(|e: tokio_postgres::Error| {
            // The parser's reasons name an option or a position, never a value (the password).
            let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), cause);
            KvError(format!("invalid PostgreSQL connection string: {reason}"))
        })?;
        let mut pg = pg;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.connect_timeout);
        }
        pg.application_name("streamkit");
        let manager =
            Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| KvError(format!("cannot build the PostgreSQL pool: {e}")))?;
        migrate(&pool, &config.schema).await?;
        let (commits, queue) = async_channel::bounded(config.commit_queue.max(1));
        let shared = Arc::new(Shared {
            pool,
            sql: Statements::new(&config.schema),
            config,
            commits,
            counters: Counters::default(),
            observer: Mutex::new(None),
        });
        for _ in 0..shared.config.committers.clamp(1, shared.config.pool_size.max(1)) {
            // The committers hold only a weak link: they exit once the queue closes, i.e. when the
            // last PgDatabase/PgStore dropped its sender.
            let weak = Arc::downgrade(&shared);
            let queue = queue.clone();
            tokio::spawn(commit_loop(queue, weak));
        }
        Ok(Self { shared })
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &PgConfig {
        &self.shared.config
    }

    /// The connection pool (shared with the Postgres bus).
    pub(crate) fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// Reports every transaction to `observer` from now on (replacing the previous one).
    pub fn set_observer(&self, observer: Option<CommitObserver>) {
        if let Ok(mut slot) = self.shared.observer.lock() {
            *slot = observer;
        }
    }

    /// A handle on the store `store_id` (nothing to create: a store exists once it has keys).
    pub fn store(&self, store_id: Uuid) -> PgStore {
        let (token, done) = async_channel::bounded(1);
        PgStore {
            db: self.clone(),
            store: store_id,
            state: Arc::new(StoreState { token: Mutex::new(Some(token)), done }),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PgStats {
        let c = &self.shared.counters;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PgStats {
            commit_requests: get(&c.commit_requests),
            transactions: get(&c.transactions),
            failed_transactions: get(&c.failed_transactions),
            retries: get(&c.retries),
            isolation_retries: get(&c.isolation_retries),
            batches_committed: get(&c.batches_committed),
            batches_conflicted: get(&c.batches_conflicted),
            bytes_committed: get(&c.bytes_committed),
            reads: get(&c.reads),
            largest_group: get(&c.largest_group),
        }
    }

    /// Commit requests waiting for a committer (a queue-depth gauge).
    pub fn queued_commits(&self) -> usize {
        self.shared.commits.len()
    }
}

/// Creates the schema and the tables, or brings them to [`SCHEMA_VERSION`]. Serialised across
/// instances starting at once by a transaction-scoped advisory lock.
async fn migrate(pool: &Pool, schema: &str) -> Result<(), KvError> {
    let mut client = pool.get().await.map_err(|e| Failure::pool(&e).logged("connect", &[]))?;
    let failed = |e: tokio_postgres::Error| Failure::driver(&e, false).logged("migrate", &[]);
    let tx = client.transaction().await.map_err(failed)?;
    let lock_name = format!("streamkit migrate {schema}");
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_name]).await.map_err(failed)?;
    let q = quote_ident(schema);
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.streamkit_migrations (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(failed)?;
    let row = tx
        .query_one(&format!("SELECT COALESCE(max(version), 0) FROM {q}.streamkit_migrations"), &[])
        .await
        .map_err(failed)?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(KvError(format!(
            "database schema {schema} is at version {current}, newer than this server's {SCHEMA_VERSION}"
        )));
    }
    for (version, description, sql) in MIGRATIONS.iter().filter(|(v, ..)| *v > current) {
        tx.batch_execute(&sql.replace("{schema}", &q)).await.map_err(failed)?;
        tx.execute(
            &format!("INSERT INTO {q}.streamkit_migrations (version, description) VALUES ($1, $2)"),
            &[version, description],
        )
        .await
        .map_err(failed)?;
        tracing::info!(schema, version, description, "PostgreSQL schema migrated");
    }
    tx.commit().await.map_err(|e| Failure::driver(&e, true).logged("migrate", &[]))
}

struct StoreState {
    /// Cloned by every operation in progress; taken by `close`, which then waits for `done`.
    token: Mutex<Option<Sender<()>>>,
    /// Reports closed once every token is gone.
    done: Receiver<()>,
}

/// An async handle on one store of a [`PgDatabase`]; clones share it.
#[derive(Clone)]
pub struct PgStore {
    db: PgDatabase,
    store: Uuid,
    state: Arc<StoreState>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("store", &self.store).field("closed", &self.is_closed()).finish()
    }
}

impl PgStore {
    /// The store's id.
    pub fn store_id(&self) -> Uuid {
        self.store
    }

    /// The database it lives in.
    pub fn database(&self) -> &PgDatabase {
        &self.db
    }

    fn enter(&self) -> Result<Sender<()>, KvError> {
        self.state
            .token
            .lock()
            .ok()
            .and_then(|token| token.clone())
            .ok_or_else(|| KvError(STORE_CLOSED.to_owned()))
    }

    /// Executes one storage effect of the engine.
    pub async fn execute(&self, op: StorageOp) -> StorageResult {
        let result = match op {
            StorageOp::Get { key } => self.get(key).await.map(StorageResult::Value),
            StorageOp::Scan(range) => self.scan(range).await.map(StorageResult::Pairs),
            StorageOp::Commit(batch) => self.commit_one(batch).await.map(StorageResult::Commit),
            StorageOp::Usage => self.usage().await.map(StorageResult::Usage),
        };
        result.unwrap_or_else(StorageResult::Failed)
    }

    /// Runs one read of this store on the I/O runtime: refused once the store is closed (and waited
    /// for by `close`), counted, and repeated once on a fresh connection if its connection was found
    /// broken. `query` runs the statement on a pooled connection.
    async fn read<T, F, Fut>(&self, operation: &'static str, query: F) -> Result<T, KvError>
    where
        T: Send + 'static,
        F: Fn(deadpool_postgres::Client, Arc<Shared>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let token = self.enter()?;
        let shared = Arc::clone(&self.db.shared);
        let store = self.store;
        let result = sidecar::run(async move {
            add(&shared.counters.reads, 1);
            with_retry_on_broken(&shared.pool, operation, store, |client| query(client, Arc::clone(&shared)))
                .await
        })
        .await;
        drop(token);
        result.map_err(KvError)?
    }

    /// Bytes of the store's keys and values (a scan of the store's rows: for storage quotas, which
    /// ask rarely).
    pub async fn usage(&self) -> Result<u64, KvError> {
        let store = self.store;
        self.read("usage", move |client, shared| async move {
            let statement = client.prepare_cached(&shared.sql.usage).await?;
            let row = client.query_one(&statement, &[&store]).await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .await
    }

    /// Reads one key.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, KvError> {
        let store = self.store;
        let key = Arc::new(key);
        self.read("get", move |client, shared| {
            let key = Arc::clone(&key);
            async move {
                let statement = client.prepare_cached(&shared.sql.get).await?;
                let row = client.query_opt(&statement, &[&store, &*key]).await?;
                Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
            }
        })
        .await
    }

    /// Reads up to `range.limit` pairs of `range` (see [`OrderedKv::scan`]).
    pub async fn scan(&self, range: ScanRange) -> Result<Vec<KvPair>, KvError> {
        if range.limit == 0 || range.start >= range.end {
            // Still refused on a closed store, like every operation.
            self.enter()?;
            return Ok(Vec::new());
        }
        let store = self.store;
        let range = Arc::new(range);
        self.read("scan", move |client, shared| {
            let range = Arc::clone(&range);
            async move {
                let limit = i64::try_from(range.limit).unwrap_or(i64::MAX);
                let max_bytes = i64::try_from(range.max_bytes).ok();
                let sql = match (range.reverse, max_bytes.is_some()) {
                    (false, false) => &shared.sql.scan_forward,
                    (true, false) => &shared.sql.scan_backward,
                    (false, true) => &shared.sql.scan_forward_bounded,
                    (true, true) => &shared.sql.scan_backward_bounded,
                };
                let statement = client.prepare_cached(sql).await?;
                let rows = match &max_bytes {
                    None => client.query(&statement, &[&store, &range.start, &range.end, &limit]).await?,
                    Some(max_bytes) => {
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                            [&store, &range.start, &range.end, &limit, max_bytes];
                        client.query(&statement, &params).await?
                    }
                };
                Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
            }
        })
        .await
    }

    /// Commits `batches` atomically, possibly in one transaction with other callers' batches (of any
    /// store), and returns one outcome per batch once the transaction committed.
    pub async fn commit(&self, batches: Vec<WriteBatch>) -> Result<Vec<CommitOutcome>, KvError> {
        let token = self.enter()?;
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest { store: self.store, batches, reply };
        self.db
            .shared
            .commits
            .send(request)
            .await
            .map_err(|_| KvError(format!("{STORE_CLOSED}: the database committers stopped")))?;
        let result = answer.await.unwrap_or_else(|_| {
            Err(KvError("database unavailable: the committer stopped before answering".to_owned()))
        });
        drop(token);
        result
    }

    /// Commits one batch (see [`PgStore::commit`]).
    pub async fn commit_one(&self, batch: WriteBatch) -> Result<CommitOutcome, KvError> {
        let mut outcomes = self.commit(vec![batch]).await?;
        outcomes.pop().ok_or_else(|| KvError("store returned no outcome for a batch".to_owned()))
    }

    /// Refuses new operations and resolves once those in progress finished (their commits are
    /// answered first). Idempotent. The database stays connected for the other stores.
    pub async fn close(&self) {
        if let Ok(mut token) = self.state.token.lock() {
            token.take();
        }
        // Err(closed) once the last operation dropped its token: that is the signal.
        let _ = self.state.done.recv().await;
    }

    /// Whether [`PgStore::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state.token.lock().map_or(true, |token| token.is_none())
    }
}

/// Runs `op` (a read of `store`) on a pooled connection; if it fails because that connection was
/// broken (a database restart the pool had not noticed yet), runs it once more on a fresh one. Only
/// for reads: they can be repeated without effect.
async fn with_retry_on_broken<T, F, Fut>(
    pool: &Pool,
    operation: &str,
    store: Uuid,
    op: F,
) -> Result<T, KvError>
where
    F: Fn(deadpool_postgres::Client) -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut attempt = 0;
    loop {
        let client = pool.get().await.map_err(|e| Failure::pool(&e).logged(operation, &[store]))?;
        match op(client).await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_closed() && attempt == 0 => attempt += 1,
            Err(e) => return Err(Failure::driver(&e, false).logged(operation, &[store])),
        }
    }
}

/// A commit request of a group, once its batches joined the group's items.
struct Caller {
    store: Uuid,
    /// How many of the group's items (consecutive, in order) are its batches.
    batches: usize,
    reply: Reply<Vec<CommitOutcome>>,
}

async fn commit_loop(queue: Receiver<CommitRequest>, shared: std::sync::Weak<Shared>) {
    // recv fails once the queue is closed and empty: every sender (database handle) is gone.
    while let Ok(first) = queue.recv().await {
        let Some(shared) = shared.upgrade() else {
            let _ = first.reply.send(Err(KvError(STORE_CLOSED.to_owned())));
            continue;
        };
        let limits = (shared.config.max_group_batches.max(1), shared.config.max_group_bytes.max(1));
        let mut count = first.batches.len();
        let mut bytes = request_bytes(&first);
        let mut group = vec![first];
        while count < limits.0 && bytes < limits.1 {
            match queue.try_recv() {
                Ok(request) => {
                    count += request.batches.len();
                    bytes += request_bytes(&request);
                    group.push(request);
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let mut items: Vec<(Uuid, WriteBatch)> = Vec::with_capacity(count);
        let mut callers = Vec::with_capacity(group.len());
        for request in group {
            callers.push(Caller {
                store: request.store,
                batches: request.batches.len(),
                reply: request.reply,
            });
            items.extend(request.batches.into_iter().map(|batch| (request.store, batch)));
        }
        add(&shared.counters.commit_requests, callers.len());
        let started = Instant::now();
        let result = commit_group(&shared, &items).await;
        record(&shared, &items, result.as_deref().ok(), callers.len(), started.elapsed());
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for caller in callers {
                    let _ = caller.reply.send(Ok(outcomes.by_ref().take(caller.batches).collect()));
                }
            }
            // Some batch of the group cannot be written: find which by committing the requests alone.
            Err(failure) if failure.kind == FailureKind::Batch && callers.len() > 1 => {
                commit_one_by_one(&shared, &items, callers, &failure).await;
            }
            Err(failure) => {
                let stores: Vec<Uuid> = callers.iter().map(|caller| caller.store).collect();
                let error = failure.logged("commit", &stores);
                for caller in callers {
                    let _ = caller.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Commits the requests of a group that failed because of some of its batches (see
/// [`FailureKind::Batch`]) one by one, each in a transaction of its own and in the group's order, so
/// that a request still sees the effects of the requests before it; only the requests that fail
/// alone get an error. Sharing a transaction is an optimisation: one tenant's unwritable batch (a key
/// too long for the index) must not fail the produces of other tenants that happened to share it.
async fn commit_one_by_one(
    shared: &Shared,
    items: &[(Uuid, WriteBatch)],
    callers: Vec<Caller>,
    group: &Failure,
) {
    add(&shared.counters.isolation_retries, 1);
    let requests = callers.len();
    let mut failed: Vec<Uuid> = Vec::new();
    // The cause of the first failure of each distinct client text (the details of the others differ
    // only in row positions and values).
    let mut causes: Vec<(KvError, String)> = Vec::new();
    // Once the database itself fails, the requests not tried yet get its error without being tried.
    let mut given_up: Option<KvError> = None;
    let mut offset = 0;
    for caller in callers {
        let own = &items[offset..offset + caller.batches];
        offset += caller.batches;
        if let Some(error) = &given_up {
            failed.push(caller.store);
            let _ = caller.reply.send(Err(error.clone()));
            continue;
        }
        let started = Instant::now();
        let result = commit_group(shared, own).await;
        record(shared, own, result.as_deref().ok(), 1, started.elapsed());
        match result {
            Ok(outcomes) => {
                let _ = caller.reply.send(Ok(outcomes));
            }
            Err(failure) => {
                match failure.kind {
                    FailureKind::Batch | FailureKind::Retry => {}
                    FailureKind::Database => given_up = Some(failure.error.clone()),
                    // Those not tried yet were certainly not applied.
                    FailureKind::OutcomeUnknown => {
                        given_up = Some(KvError("database unavailable: connection lost".to_owned()));
                    }
                }
                failed.push(caller.store);
                if !causes.iter().any(|(error, _)| *error == failure.error) {
                    causes.push((failure.error.clone(), failure.cause));
                }
                let _ = caller.reply.send(Err(failure.error));
            }
        }
    }
    // One line per isolated group, and a client can make a group fail with every batch it sends.
    limited_log!(
        warn,
        [
            requests,
            failed = failed.len(),
            store_ids = %StoreIds(&failed),
            group_error = %group.error,
            causes = %causes.into_iter().map(|(_, cause)| cause).collect::<Vec<_>>().join(" | ")
        ],
        "a PostgreSQL commit group failed because of some of its batches; its requests were committed one \
         by one and only those failing alone got an error"
    );
}

fn request_bytes(request: &CommitRequest) -> usize {
    request.batches.iter().map(WriteBatch::byte_size).sum()
}

/// Counts one transaction (`outcomes` is `None` when it failed) and reports it to the observer.
fn record(
    shared: &Shared,
    items: &[(Uuid, WriteBatch)],
    outcomes: Option<&[CommitOutcome]>,
    requests: usize,
    elapsed: Duration,
) {
    let c = &shared.counters;
    c.largest_group.fetch_max(u64::try_from(items.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
    let mut report = CommitReport {
        requests,
        batches: items.len(),
        committed: 0,
        bytes: 0,
        fsynced: false,
        failed: false,
        elapsed,
    };
    match outcomes {
        Some(outcomes) => {
            add(&c.transactions, 1);
            for ((_, batch), outcome) in items.iter().zip(outcomes) {
                if *outcome == CommitOutcome::Committed {
                    report.committed += 1;
                    report.bytes += batch.byte_size();
                }
            }
            add(&c.batches_committed, report.committed);
            add(&c.batches_conflicted, items.len() - report.committed);
            add(&c.bytes_committed, report.bytes);
            // A PostgreSQL commit that wrote something is flushed to its WAL (synchronous_commit).
            report.fsynced = report.committed > 0;
        }
        None => {
            add(&c.failed_transactions, 1);
            report.failed = true;
        }
    }
    let observer = shared.observer.lock().ok().and_then(|o| o.clone());
    if let Some(observer) = observer {
        observer.report(&report);
    }
}

/// Commits `items` in one transaction, repeated after a [`FailureKind::Retry`] failure (at most
/// [`PgConfig::commit_retries`] times).
async fn commit_group(shared: &Shared, items: &[(Uuid, WriteBatch)]) -> Result<Vec<CommitOutcome>, Failure> {
    let mut attempt = 0;
    loop {
        let mut client = shared.pool.get().await.map_err(|e| Failure::pool(&e))?;
        match commit_once(shared, &mut client, items).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(failure) if failure.kind == FailureKind::Retry && attempt < shared.config.commit_retries => {
                attempt += 1;
                add(&shared.counters.retries, 1);
                tracing::debug!(error = %failure.error, cause = %failure.cause, attempt, "retrying a PostgreSQL commit group");
            }
            Err(failure) => return Err(failure),
        }
    }
}

type Key = (Uuid, Vec<u8>);

/// One attempt: lock, decide, write, commit (see the module docs).
async fn commit_once(
    shared: &Shared,
    client: &mut deadpool_postgres::Client,
    items: &[(Uuid, WriteBatch)],
) -> Result<Vec<CommitOutcome>, Failure> {
    let fail = |e: tokio_postgres::Error| Failure::driver(&e, false);
    let tx = client.transaction().await.map_err(fail)?;

    // 1. Current values of the precondition keys, their rows locked.
    let mut current: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
    for (store, batch) in items {
        for precondition in &batch.preconditions {
            current.insert((*store, precondition.key().to_vec()), None);
        }
    }
    if !current.is_empty() {
        let (stores, keys): (Vec<Uuid>, Vec<&[u8]>) = current.keys().map(|(s, k)| (*s, k.as_slice())).unzip();
        let statement = tx.prepare_cached(&shared.sql.lock_rows).await.map_err(fail)?;
        let rows = tx.query(&statement, &[&stores, &keys]).await.map_err(fail)?;
        for row in rows {
            let key: Key = (row.get(0), row.get(1));
            current.insert(key, Some(row.get(2)));
        }
    }

    // 2. Decide every batch in order; `written` holds the net change of every key.
    let mut written: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
    let mut outcomes = Vec::with_capacity(items.len());
    for (store, batch) in items {
        let failed = batch.preconditions.iter().position(|precondition| {
            let key = (*store, precondition.key().to_vec());
            let value = written.get(&key).or_else(|| current.get(&key)).and_then(Option::as_deref);
            !precondition.holds(value)
        });
        if let Some(index) = failed {
            outcomes.push(CommitOutcome::Conflict { index });
            continue;
        }
        for (key, value) in &batch.puts {
            written.insert((*store, key.clone()), Some(value.clone()));
        }
        for key in &batch.deletes {
            written.insert((*store, key.clone()), None);
        }
        outcomes.push(CommitOutcome::Committed);
    }

    // 3. Write: keys known absent with a plain INSERT (a racing insert makes it fail, and the group is
    //    decided again), the others with an upsert; deletes last. Keys are in order (BTreeMap).
    let mut inserts: (Vec<Uuid>, Vec<&[u8]>, Vec<&[u8]>) = Default::default();
    let mut upserts: (Vec<Uuid>, Vec<&[u8]>, Vec<&[u8]>) = Default::default();
    let mut deletes: (Vec<Uuid>, Vec<&[u8]>) = Default::default();
    for (key, value) in &written {
        let known_absent = matches!(current.get(key), Some(None));
        match value {
            Some(value) if known_absent => {
                inserts.0.push(key.0);
                inserts.1.push(&key.1);
                inserts.2.push(value);
            }
            Some(value) => {
                upserts.0.push(key.0);
                upserts.1.push(&key.1);
                upserts.2.push(value);
            }
            None if known_absent => {}
            None => {
                deletes.0.push(key.0);
                deletes.1.push(&key.1);
            }
        }
    }
    if !inserts.0.is_empty() {
        let statement = tx.prepare_cached(&shared.sql.insert).await.map_err(fail)?;
        tx.execute(&statement, &[&inserts.0, &inserts.1, &inserts.2]).await.map_err(fail)?;
    }
    if !upserts.0.is_empty() {
        let statement = tx.prepare_cached(&shared.sql.upsert).await.map_err(fail)?;
        tx.execute(&statement, &[&upserts.0, &upserts.1, &upserts.2]).await.map_err(fail)?;
    }
    if !deletes.0.is_empty() {
        let statement = tx.prepare_cached(&shared.sql.delete).await.map_err(fail)?;
        tx.execute(&statement, &[&deletes.0, &deletes.1]).await.map_err(fail)?;
    }
    tx.commit().await.map_err(|e| Failure::driver(&e, true))?;
    Ok(outcomes)
}

/// A synchronous [`OrderedKv`] over one store of a [`PgDatabase`] (each call blocks the calling thread
/// until the database answered): for synchronous drivers and tests. Commits still go through the
/// shared committers. Never use it from an async executor's thread.
#[derive(Clone, Debug)]
pub struct PgKv {
    store: PgStore,
}

impl PgKv {
    /// The store `store_id` of `db`.
    pub fn new(db: &PgDatabase, store_id: Uuid) -> Self {
        Self { store: db.store(store_id) }
    }
}

impl OrderedKv for PgKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        sidecar::block_on(self.store.get(key.to_vec()))
    }

    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
        sidecar::block_on(self.store.scan(range.clone()))
    }

    fn usage(&self) -> Result<u64, KvError> {
        sidecar::block_on(self.store.usage())
    }

    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        sidecar::block_on(self.store.commit(batches.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("public"), "\"public\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let sql = Statements::new("t1");
        assert!(sql.get.contains("\"t1\".streamkit_kv"), "{}", sql.get);
        assert!(sql.scan_backward.contains("DESC") && sql.scan_forward.contains("ASC"));
    }

    #[test]
    fn migrations_are_numbered_in_order_up_to_the_schema_version() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(v, ..)| *v).collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    }

    #[test]
    fn an_invalid_connection_string_is_a_clear_error() {
        let err =
            PgDatabase::connect_blocking(PgConfig::new("postgres://u:secret@h:notaport/db")).unwrap_err();
        assert_eq!(err.0, "invalid PostgreSQL connection string: invalid value for option `port`");
    }

    #[test]
    fn clients_read_the_sqlstate_class_and_code() {
        let text = |code: &str| sqlstate_text("database error", code);
        assert_eq!(text("54000"), "database error: program limit exceeded (SQLSTATE 54000)");
        assert_eq!(text("22021"), "database error: data exception (SQLSTATE 22021)");
        assert_eq!(text("23503"), "database error: integrity constraint violation (SQLSTATE 23503)");
        assert_eq!(text("40P01"), "database error: transaction rollback (SQLSTATE 40P01)");
        assert_eq!(text("42P01"), "database error: syntax error or access rule violation (SQLSTATE 42P01)");
        assert_eq!(text("53100"), "database error: insufficient resources (SQLSTATE 53100)");
        assert_eq!(text("55P03"), "database error: object not in prerequisite state (SQLSTATE 55P03)");
        assert_eq!(text("57P01"), "database error: operator intervention (SQLSTATE 57P01)");
        assert_eq!(text("58030"), "database error: system error (SQLSTATE 58030)");
        assert_eq!(text("XX001"), "database error: internal error (SQLSTATE XX001)");
        assert_eq!(text("08006"), "database error: connection exception (SQLSTATE 08006)");
        assert_eq!(text("P0001"), "database error (SQLSTATE P0001)");
        assert_eq!(text(""), "database error (SQLSTATE )");
        assert_eq!(
            sqlstate_text("database unavailable", "28P01"),
            "database unavailable: invalid authorization specification (SQLSTATE 28P01)"
        );
    }

    #[test]
    fn only_errors_caused_by_the_data_are_isolated() {
        let kind = |code: &str| server_error_kind(&SqlState::from_code(code));
        // Caused by the batches: another group without them would commit.
        for code in ["54000", "22021", "22001", "23502", "23503", "23514", "21000"] {
            assert_eq!(kind(code), FailureKind::Batch, "{code}");
        }
        // Repeated as a whole first.
        for code in ["40001", "40P01", "23505"] {
            assert_eq!(kind(code), FailureKind::Retry, "{code}");
        }
        // The database's own state: nothing to gain from trying requests one by one.
        for code in ["53100", "53300", "57P01", "57014", "58030", "XX000", "42P01", "42501", "25006", "08006"]
        {
            assert_eq!(kind(code), FailureKind::Database, "{code}");
        }
    }

    #[test]
    fn store_ids_are_listed_once_each() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(
            StoreIds(&[a, b, a, b]).to_string(),
            "00000000-0000-0000-0000-000000000001,00000000-0000-0000-0000-000000000002"
        );
        assert_eq!(StoreIds(&[]).to_string(), "");
    }

    #[test]
    fn the_debug_form_of_a_configuration_hides_the_password() {
        for url in
            ["postgres://streamkit:s3cret@db:5432/sk", "host=db user=streamkit password=s3cret dbname=sk"]
        {
            let text = format!("{:?}", PgConfig::new(url));
            assert!(
                !text.contains("s3cret") && text.contains("streamkit") && text.contains("pool_size"),
                "{text}"
            );
        }
        let text = format!("{:?}", PgConfig::new("postgres://u:s3cret@h:notaport/db"));
        assert!(!text.contains("s3cret") && text.contains("<invalid, not shown>"), "{text}");
    }
}
