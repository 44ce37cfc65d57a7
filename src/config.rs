//! Typed configuration: the command line, every option also read from the environment,
//! validated once at start-up into the settings the rest of the crate uses.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::cache::{CacheSettings, DeltaSettings};

/// A configuration problem found at start-up. Its message names the setting to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// A string that must never be printed: API keys and the phpMyAdmin password.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with this secret replaced by `[redacted]`. A secret shorter than
    /// [`SHORT_SECRET`] characters is replaced only where it stands alone (not inside a longer
    /// word), so that a one-letter password does not garble every message while an echo of it
    /// (`password 'x'`) is still hidden.
    pub fn scrub(&self, text: &str) -> String {
        let secret = self.0.as_str();
        if secret.is_empty() {
            return text.to_owned();
        }
        if secret.chars().count() >= SHORT_SECRET {
            return text.replace(secret, "[redacted]");
        }
        let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(secret) {
            let (before, after) = (&rest[..at], &rest[at + secret.len()..]);
            let alone = !word(before.chars().next_back().or(out.chars().next_back()))
                && !word(after.chars().next());
            out.push_str(before);
            out.push_str(if alone { "[redacted]" } else { secret });
            rest = after;
        }
        out.push_str(rest);
        out
    }
}

/// Secrets shorter than this are redacted only where they stand alone as a word.
const SHORT_SECRET: usize = 4;

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Help text on the one setting read outside clap, so `--help` lists every variable.
const LOG_HELP: &str = "\
Logging:
  RUST_LOG  Log level and filter, e.g. debug or pma_cache=debug [default: info]

Every option can also be set through the environment variable shown beside it.";

/// Serves a phpMyAdmin table as an instantly available JSON cache.
#[derive(Debug, Parser)]
#[command(name = "pma-cache", version, about, long_about = None, after_help = LOG_HELP)]
pub struct Cli {
    /// Log line format: `human` (default) or `json` (one object a line, for log shippers).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines: time, level, message, fields.
    Human,
    /// One JSON object a line: `timestamp`, `level`, `message` and the fields.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (and, with phpMyAdmin settings, refresh the cache on request or on a schedule).
    #[command(after_help = LOG_HELP)]
    Serve(ServeArgs),
    /// Convert a local CSV file (first row = column names) into the cache file, atomically, then exit.
    #[command(after_help = LOG_HELP)]
    Import(ImportArgs),
    /// Run the standalone sync worker: sync when the cache is older than SYNC_INTERVAL, then every SYNC_INTERVAL.
    #[command(after_help = LOG_HELP)]
    Worker(WorkerArgs),
    /// Run one sync, then exit 0 on success or non-zero with the reason (75: another process is syncing, with --no-wait).
    #[command(after_help = LOG_HELP)]
    Sync(SyncArgs),
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The JSON cache file that `serve` reads and the sync writes; with REDIS_URL, a local copy
    /// to start from when Redis is unreachable.
    #[arg(long, env = "CACHE_FILE", default_value = "cache/data_cache.json")]
    pub cache_file: PathBuf,
    /// Share versions and the sync lock through this Redis (redis:// or rediss://, user and
    /// password in the URL), for several replicas and a worker that share no disk.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// How long the Redis sync lock lives without renewal (a dead holder blocks syncs this long).
    #[arg(long, env = "REDIS_LOCK_TTL", value_parser = parse_duration, default_value = "30s")]
    pub redis_lock_ttl: Duration,
    /// The secret every process sharing REDIS_URL signs versions and change sets with
    /// (HMAC-SHA256); one not signed with it is refused, so whoever can write to Redis without
    /// it cannot make replicas serve their bytes. Required with REDIS_URL; at least 16 characters.
    #[arg(long, env = "REDIS_SIGNING_KEY", hide_env_values = true)]
    pub redis_signing_key: Option<Secret>,
    /// Make the cache file and its `.meta` readable by the group (0640), for a reader running as
    /// another user of that group; otherwise they are private (0600).
    #[arg(long, env = "CACHE_GROUP_READABLE", value_parser = EnvBool, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_name = "BOOL")]
    pub cache_group_readable: bool,
    /// The largest version read from Redis, compressed or not (e.g. 4GiB); larger ones are
    /// refused before anything is read (default: 8 times the last version's size, at least 2GiB).
    #[arg(long, env = "REDIS_MAX_BYTES")]
    pub redis_max_bytes: Option<bytesize::ByteSize>,
}

/// Where versions are shared, validated.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    pub redis_url: Secret,
    pub lock_ttl: Duration,
    pub signing_key: Secret,
    pub max_bytes: Option<u64>,
}

impl CacheArgs {
    /// The cache file and the Redis settings, checked.
    pub fn validate(self) -> Result<(PathBuf, Option<SharedSettings>), ConfigError> {
        let cache_file = validate_cache_file(self.cache_file)?;
        // The mode of every file written from now on, like the umask it stands beside.
        crate::cache::files::set_group_readable(self.cache_group_readable);
        let shared = match self.redis_url.filter(|u| !u.expose().trim().is_empty()) {
            None => None,
            Some(url) => {
                let scheme = url.expose().split("://").next().unwrap_or_default();
                if !matches!(scheme, "redis" | "rediss") {
                    return Err(ConfigError::new(
                        "REDIS_URL must start with redis:// or rediss://",
                    ));
                }
                if self.redis_lock_ttl < Duration::from_secs(1) {
                    return Err(ConfigError::new("REDIS_LOCK_TTL must be at least 1s"));
                }
                let signing_key = self
                    .redis_signing_key
                    .filter(|k| !k.expose().is_empty())
                    .ok_or_else(|| {
                        ConfigError::new(
                            "REDIS_SIGNING_KEY is not set: with REDIS_URL, every process that shares it needs the same secret (e.g. `openssl rand -hex 32`) to sign and check versions",
                        )
                    })?;
                if signing_key.expose().chars().count() < MIN_KEY_LENGTH {
                    return Err(ConfigError::new(format!(
                        "REDIS_SIGNING_KEY is too short: use at least {MIN_KEY_LENGTH} characters"
                    )));
                }
                if self.redis_max_bytes.is_some_and(|b| b.as_u64() < 1 << 20) {
                    return Err(ConfigError::new("REDIS_MAX_BYTES must be at least 1MiB"));
                }
                Some(SharedSettings {
                    redis_url: url,
                    lock_ttl: self.redis_lock_ttl,
                    signing_key,
                    max_bytes: self.redis_max_bytes.map(|b| b.as_u64()),
                })
            }
        };
        Ok((cache_file, shared))
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address or host name to listen on (`localhost` is resolved when binding).
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Origins allowed to call the API from a browser (comma-separated); unset sends no CORS headers.
    #[arg(long, env = "CORS_ALLOW_ORIGINS")]
    pub cors_allow_origins: Option<String>,
    /// Refresh the cache on this schedule (e.g. `1h`, `30m`); unset refreshes on request only.
    #[arg(long, env = "SYNC_INTERVAL", value_parser = parse_duration)]
    pub sync_interval: Option<Duration>,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub pma: PmaArgs,
    #[command(flatten)]
    pub alerts: AlertArgs,
    #[command(flatten)]
    pub query: QueryArgs,
    /// Change sets kept so that a client holding one of the last this many versions catches up
    /// with a delta (`/fetch-data?since=`); 0 keeps none.
    #[arg(long, env = "DELTA_VERSIONS", default_value_t = 48)]
    pub delta_versions: usize,
    /// Memory the kept change sets may use together (e.g. 64MiB); the oldest go first.
    #[arg(long, env = "DELTA_MEMORY", default_value = "64MiB")]
    pub delta_memory: bytesize::ByteSize,
}

/// The keys clients send, by what each may do.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Read key(s): `/fetch-data`, `/query`, `/tables`, event streams and `/status` without its
    /// details. Comma-separated for rotation; each at least 16 characters.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Admin key(s): everything a read key does, and `POST /refresh`, `refresh=true` on event
    /// streams, `/status` details, `/metrics` and the failure screenshot.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<Secret>,
    /// Key(s) that read `/metrics` only (what Prometheus holds).
    #[arg(long, env = "METRICS_KEY", hide_env_values = true)]
    pub metrics_key: Option<Secret>,
    /// Least time between two syncs asked for through the API (`POST /refresh`, `refresh=true`);
    /// one sooner gets 429 with Retry-After. `0` sets no minimum.
    #[arg(long, env = "REFRESH_MIN_INTERVAL", value_parser = parse_duration_or_zero, default_value = "60s")]
    pub refresh_min_interval: Duration,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Data: `/fetch-data`, `/query`, `/tables`, event streams, the `/status` summary.
    Read,
    /// Everything.
    Admin,
    /// `/metrics` only.
    Metrics,
}

impl Role {
    /// The setting that holds keys of this role.
    pub fn setting(self) -> &'static str {
        match self {
            Role::Read => "API_KEY",
            Role::Admin => "ADMIN_API_KEY",
            Role::Metrics => "METRICS_KEY",
        }
    }
}

/// The shortest key accepted: 16 characters (`openssl rand -hex 16` gives 32).
pub const MIN_KEY_LENGTH: usize = 16;

/// Every configured key with its role, validated.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Vec<(Secret, Role)>);

impl ApiKeys {
    /// The keys and their roles.
    pub fn iter(&self) -> impl Iterator<Item = &(Secret, Role)> {
        self.0.iter()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys themselves, to scrub from alert texts.
    pub fn secrets(&self) -> Vec<Secret> {
        self.0.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Reads the comma-separated lists of each role; a key shorter than [`MIN_KEY_LENGTH`] or
    /// listed twice is refused.
    fn parse(lists: &[(Role, &Option<Secret>)]) -> Result<Self, ConfigError> {
        let mut keys: Vec<(Secret, Role)> = Vec::new();
        for (role, list) in lists {
            let Some(list) = list else { continue };
            let setting = role.setting();
            let parsed = parse_key_list(setting, list)?;
            for key in parsed {
                if let Some((_, other)) = keys.iter().find(|(k, _)| *k == key) {
                    return Err(ConfigError::new(format!(
                        "{setting}: a key is also listed in {}: give each key one role",
                        other.setting()
                    )));
                }
                keys.push((key, *role));
            }
        }
        Ok(Self(keys))
    }
}

/// The keys of one comma-separated setting, each at least [`MIN_KEY_LENGTH`] characters.
fn parse_key_list(setting: &str, keys: &Secret) -> Result<Vec<Secret>, ConfigError> {
    let keys: Vec<Secret> = keys
        .expose()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Secret::new)
        .collect();
    if keys.is_empty() {
        return Err(ConfigError::new(format!(
            "{setting} is empty: give at least one key"
        )));
    }
    if let Some(short) = keys
        .iter()
        .map(|k| k.expose().chars().count())
        .find(|n| *n < MIN_KEY_LENGTH)
    {
        return Err(ConfigError::new(format!(
            "{setting}: a key of {short} characters is too short: use at least {MIN_KEY_LENGTH} (e.g. `openssl rand -hex 24`)"
        )));
    }
    Ok(keys)
}

/// Limits on connections and event streams, checked before any key.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Drop a client (an event stream's above all) that takes no data for this long, so a
    /// stalled reader does not pin the version it was being sent.
    #[arg(long, env = "SSE_WRITE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub sse_write_timeout: Duration,
    /// Close a connection that has not sent a whole request head this long after it opened or
    /// after its last answer (a slow or idle keep-alive connection).
    #[arg(long, env = "HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is answered 503 with Retry-After and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Event streams (`stream=true`) open at once in all; one more gets 503 with Retry-After.
    #[arg(long, env = "MAX_STREAMS", default_value_t = 2048)]
    pub max_streams: usize,
    /// Event streams open at once with one key (every browser of a page shares its read key);
    /// one more gets 429 with Retry-After.
    #[arg(long, env = "MAX_STREAMS_PER_KEY", default_value_t = 1024)]
    pub max_streams_per_key: usize,
}

/// Validated connection and stream limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub write_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_streams: usize,
    pub max_streams_per_key: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_streams: 2048,
            max_streams_per_key: 1024,
        }
    }
}

impl LimitArgs {
    /// Checks the limits.
    pub fn validate(self) -> Result<ServerLimits, ConfigError> {
        for (name, value) in [
            ("MAX_CONNECTIONS", self.max_connections),
            ("MAX_STREAMS", self.max_streams),
            ("MAX_STREAMS_PER_KEY", self.max_streams_per_key),
        ] {
            if value == 0 {
                return Err(ConfigError::new(format!("{name} must be at least 1")));
            }
        }
        Ok(ServerLimits {
            write_timeout: self.sse_write_timeout,
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            max_streams: self.max_streams,
            max_streams_per_key: self.max_streams_per_key,
        })
    }
}

/// How `/query` and `/tables` run queries.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Most rows a JSON answer holds; it is cut there and says `"truncated": true` (NDJSON, CSV,
    /// Arrow and Parquet answers hold every row).
    #[arg(long, env = "QUERY_MAX_ROWS", default_value_t = 10_000)]
    pub query_max_rows: usize,
    /// A query still running after this long is stopped with an error.
    #[arg(long, env = "QUERY_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub query_timeout: Duration,
    /// Memory the running queries may use together for sorts, groups and joins (e.g. 512MiB);
    /// a query that needs more is stopped with an error.
    #[arg(long, env = "QUERY_MEMORY", default_value = "512MiB")]
    pub query_memory: bytesize::ByteSize,
    /// Queries that run at once, each on the query threads; more wait for their turn.
    #[arg(long, env = "QUERY_CONCURRENCY", default_value_t = 2)]
    pub query_concurrency: usize,
    /// Memory for answers kept per version (the same query on the same version is answered from
    /// it); 0 keeps none.
    #[arg(long, env = "QUERY_CACHE", default_value = "64MiB")]
    pub query_cache: bytesize::ByteSize,
}

/// Validated query settings.
#[derive(Debug, Clone)]
pub struct QuerySettings {
    pub max_rows: usize,
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub concurrency: usize,
    pub cache_bytes: u64,
}

impl QueryArgs {
    /// Checks the limits.
    pub fn validate(self) -> Result<QuerySettings, ConfigError> {
        if self.query_max_rows == 0 {
            return Err(ConfigError::new("QUERY_MAX_ROWS must be at least 1"));
        }
        if self.query_timeout < Duration::from_millis(10) {
            return Err(ConfigError::new("QUERY_TIMEOUT must be at least 10ms"));
        }
        if self.query_memory.as_u64() < 1 << 20 {
            return Err(ConfigError::new("QUERY_MEMORY must be at least 1MiB"));
        }
        if !(1..=64).contains(&self.query_concurrency) {
            return Err(ConfigError::new("QUERY_CONCURRENCY must be from 1 to 64"));
        }
        Ok(QuerySettings {
            max_rows: self.query_max_rows,
            timeout: self.query_timeout,
            memory_bytes: usize::try_from(self.query_memory.as_u64()).unwrap_or(usize::MAX),
            concurrency: self.query_concurrency,
            cache_bytes: self.query_cache.as_u64(),
        })
    }
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            timeout: Duration::from_secs(5),
            memory_bytes: 512 << 20,
            concurrency: 2,
            cache_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file to import; its first row holds the column names.
    pub file: PathBuf,
    /// Fields exactly equal to this token become JSON null (default: none; an empty field stays "").
    #[arg(long, env = "IMPORT_NULL")]
    pub null: Option<String>,
    /// A file with the table's `CREATE TABLE` (MySQL), which types the columns for queries and
    /// names the key; without it every column is text.
    #[arg(long, env = "IMPORT_SCHEMA")]
    pub schema: Option<PathBuf>,

    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Time between syncs.
    #[arg(long, env = "SYNC_INTERVAL", value_parser = parse_duration, default_value = "1h")]
    pub sync_interval: Duration,
    /// Port of the worker's own `/health` and `/metrics` (for orchestrators' probes and
    /// Prometheus); not PORT's default, so a worker beside a `serve` does not collide with it.
    #[arg(long, env = "WORKER_PORT", default_value_t = 9090)]
    pub worker_port: u16,
    /// Address or host name the worker's `/health` and `/metrics` listen on.
    #[arg(long, env = "WORKER_HOST", default_value = "0.0.0.0")]
    pub worker_host: String,
    /// Admin key(s) the worker's `/metrics` takes (comma-separated, each at least 16
    /// characters); with neither this nor METRICS_KEY, `/metrics` is open to whoever reaches
    /// WORKER_PORT.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<Secret>,
    /// Key(s) that read the worker's `/metrics` only (what Prometheus holds).
    #[arg(long, env = "METRICS_KEY", hide_env_values = true)]
    pub metrics_key: Option<Secret>,
    /// Read keys: the worker serves no data, so it takes none; read only to refuse a setting
    /// that once protected its `/metrics` and no longer does.
    #[arg(long, env = "API_KEY", hide = true, hide_env_values = true)]
    pub api_key: Option<Secret>,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub pma: PmaArgs,
    #[command(flatten)]
    pub alerts: AlertArgs,
}

/// Where and when to send alerts, shared by `serve` and `worker`.
#[derive(Debug, Args)]
pub struct AlertArgs {
    /// Incoming-webhook address (Slack, Mattermost, any JSON receiver) that gets a POST when a sync
    /// fails, recovers, or the cache grows stale. Unset sends no alerts.
    #[arg(long, env = "ALERT_WEBHOOK_URL", hide_env_values = true)]
    pub alert_webhook_url: Option<Secret>,
    /// Cache age past which it counts as stale: alerted, and red on the dashboard
    /// (default: twice SYNC_INTERVAL, or 2h without one).
    #[arg(long, env = "STALE_AFTER", value_parser = parse_duration)]
    pub stale_after: Option<Duration>,
    /// A failure or staleness that goes on is alerted again after this long.
    #[arg(long, env = "ALERT_REPEAT_AFTER", value_parser = parse_duration, default_value = "6h")]
    pub alert_repeat_after: Duration,
}

/// Validated alert settings.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// The webhook; it may carry a token in its path, so it is never logged whole.
    pub webhook: Option<url::Url>,
    pub stale_after: Duration,
    pub repeat_after: Duration,
}

/// Cache age that counts as stale when STALE_AFTER is unset.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(2 * 3600);

impl AlertArgs {
    /// Checks the webhook address and settles the staleness threshold for `sync_interval`.
    pub fn validate(self, sync_interval: Option<Duration>) -> Result<AlertSettings, ConfigError> {
        let webhook = match self.alert_webhook_url {
            Some(raw) if !raw.expose().trim().is_empty() => {
                let url = url::Url::parse(raw.expose().trim()).map_err(|e| {
                    ConfigError::new(format!("ALERT_WEBHOOK_URL is not a URL ({e})"))
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::new(
                        "ALERT_WEBHOOK_URL must start with http:// or https://",
                    ));
                }
                Some(url)
            }
            _ => None,
        };
        Ok(AlertSettings {
            webhook,
            stale_after: self
                .stale_after
                .unwrap_or_else(|| sync_interval.map_or(DEFAULT_STALE_AFTER, |i| i * 2)),
            repeat_after: self.alert_repeat_after,
        })
    }
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// When another process is syncing the same cache, exit at once with status 75 instead of
    /// waiting for it (and then exiting 0 without exporting again).
    #[arg(long, env = "SYNC_NO_WAIT", value_parser = EnvBool, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_name = "BOOL")]
    pub no_wait: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub pma: PmaArgs,
}

/// phpMyAdmin, browser and sync settings shared by `serve`, `worker` and `sync`.
#[derive(Debug, Args)]
pub struct PmaArgs {
    /// phpMyAdmin's address, e.g. https://db.example.com/phpmyadmin/
    #[arg(long, env = "PMA_URL")]
    pub pma_url: Option<String>,
    /// phpMyAdmin user name.
    #[arg(long, env = "PMA_USERNAME")]
    pub pma_username: Option<String>,
    /// phpMyAdmin password (prefer PMA_PASSWORD_FILE).
    #[arg(long, env = "PMA_PASSWORD", hide_env_values = true)]
    pub pma_password: Option<Secret>,
    /// A file holding the phpMyAdmin password (trailing newline ignored).
    #[arg(long, env = "PMA_PASSWORD_FILE")]
    pub pma_password_file: Option<PathBuf>,
    /// The database that holds the table.
    #[arg(long, env = "PMA_DATABASE")]
    pub pma_database: Option<String>,
    /// The table to export.
    #[arg(long, env = "PMA_TABLE", default_value = "orders")]
    pub pma_table: String,
    /// The column(s) that identify a row, comma-separated, instead of the table's primary key
    /// (for deltas and key lookups; needed when the table declares none).
    #[arg(long, env = "PMA_KEY")]
    pub pma_key: Option<String>,
    /// Use this running WebDriver server instead of starting chromedriver.
    #[arg(long, env = "WEBDRIVER_URL")]
    pub webdriver_url: Option<String>,
    /// The chromedriver program to start when WEBDRIVER_URL is unset.
    #[arg(long, env = "CHROMEDRIVER_PATH", default_value = "chromedriver")]
    pub chromedriver_path: PathBuf,
    /// The Chromium/Chrome binary (default: the one chromedriver finds).
    #[arg(long, env = "CHROME_PATH")]
    pub chrome_path: Option<PathBuf>,
    /// Deadline for one whole sync, retries included.
    #[arg(long, env = "SYNC_TIMEOUT", value_parser = parse_duration, default_value = "10m")]
    pub sync_timeout: Duration,
    /// `serve` and `worker` keep the browser, logged in, between syncs; it is closed after this
    /// long unused (`0`: after every sync). `sync` always closes it.
    #[arg(long, env = "BROWSER_IDLE_TIMEOUT", value_parser = parse_duration_or_zero, default_value = "15m")]
    pub browser_idle_timeout: Duration,
    /// Refuse an export with fewer rows than this fraction of the cached rows (0 to 1).
    #[arg(long, env = "SYNC_MIN_ROW_RATIO", default_value_t = 0.5)]
    pub sync_min_row_ratio: f64,
    /// Accept an export even if it is empty or much smaller than the current cache.
    #[arg(long, env = "SYNC_FORCE", value_parser = EnvBool, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_name = "BOOL")]
    pub force: bool,
    /// Between full exports, syncs export only what changed: by row digests computed by
    /// MySQL (tables with a primary key), or by SYNC_CURSOR. A full export runs at least this
    /// often, on a process's first sync and on `POST /refresh?full=true` (`0`: every sync).
    #[arg(long, env = "SYNC_FULL_EVERY", value_parser = parse_duration_or_zero, default_value = "24h")]
    pub sync_full_every: Duration,
    /// A column that every insert and update sets to the current time (e.g. updated_at): syncs
    /// between full exports then export the rows at or after the last one seen (less
    /// SYNC_CURSOR_OVERLAP) and the key column alone to find deletions, instead of hashing
    /// every row. Give the column an index, or each sync scans the table for it.
    #[arg(long, env = "SYNC_CURSOR")]
    pub sync_cursor: Option<String>,
    /// How far before the last cursor value seen a cursor sync looks again, for rows written
    /// late or by a clock behind.
    #[arg(long, env = "SYNC_CURSOR_OVERLAP", value_parser = parse_duration_or_zero, default_value = "5m")]
    pub sync_cursor_overlap: Duration,
}

/// A boolean as people write it: `1/0`, `true/false`, `yes/no` (any case). A bad value's error
/// names the environment variable and the flag, since either may have carried it.
#[derive(Clone, Copy, Debug)]
pub struct EnvBool;

impl EnvBool {
    /// Reads `value` as a boolean, `None` when it is none of the accepted spellings.
    pub fn parse(value: &str) -> Option<bool> {
        match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Some(true),
            "0" | "false" | "no" => Some(false),
            _ => None,
        }
    }
}

impl TypedValueParser for EnvBool {
    type Value = bool;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<bool, clap::Error> {
        let text = value.to_string_lossy();
        Self::parse(&text).ok_or_else(|| {
            let setting = match arg {
                Some(a) => match (a.get_env(), a.get_long()) {
                    (Some(env), Some(long)) => format!("{} (--{long})", env.to_string_lossy()),
                    (Some(env), None) => env.to_string_lossy().into_owned(),
                    (None, _) => a.to_string(),
                },
                None => "a setting".to_owned(),
            };
            clap::Error::raw(
                ErrorKind::InvalidValue,
                format!("{setting}: {text:?} is not a boolean (use 1/0, true/false or yes/no)\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            ["true", "false", "1", "0", "yes", "no"]
                .into_iter()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 10m, 1h)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 0, 30s, 10m, 1h)"))
}

/// How the browser is reached.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// A running WebDriver server; `None` starts `chromedriver_path` for each sync.
    pub webdriver_url: Option<String>,
    pub chromedriver_path: PathBuf,
    pub chrome_path: Option<PathBuf>,
}

/// Everything one sync needs, validated.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// phpMyAdmin's base address, always ending in `/`.
    pub pma_url: url::Url,
    pub username: String,
    pub password: Secret,
    pub database: String,
    pub table: String,
    /// The columns PMA_KEY names instead of the table's primary key.
    pub key: Option<Vec<String>>,
    pub browser: BrowserSettings,
    /// Deadline for a whole sync.
    pub timeout: Duration,
    pub min_row_ratio: f64,
    pub force: bool,
    /// Where a failed sync leaves its screenshot and page source.
    pub failures_dir: PathBuf,
    /// How long a long-running process keeps an unused browser (zero: close after each sync).
    pub browser_idle_timeout: Duration,
    /// A full export at least this often; zero: every sync is one (SYNC_FULL_EVERY).
    pub full_every: Duration,
    /// The cursor column of incremental syncs, if any (SYNC_CURSOR).
    pub cursor: Option<String>,
    pub cursor_overlap: Duration,
}

impl SyncSettings {
    /// What in these settings puts a secret at risk, one sentence each, for the log at start:
    /// a password sent in clear, a browser driven across the network.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.pma_url.scheme() == "http" && !is_loopback(self.pma_url.host()) {
            warnings.push(format!(
                "PMA_URL is http:// on {}: the phpMyAdmin password and the table cross the network unencrypted; use https://",
                self.pma_url.host_str().unwrap_or("?")
            ));
        }
        if let Some(webdriver) = &self.browser.webdriver_url {
            let url = url::Url::parse(webdriver).ok();
            if !is_loopback(url.as_ref().and_then(url::Url::host)) {
                warnings.push(format!(
                    "WEBDRIVER_URL points at {}, not this machine: the phpMyAdmin password is typed through an unencrypted WebDriver connection; keep the WebDriver server on a private network",
                    url.as_ref().and_then(url::Url::host_str).unwrap_or("?")
                ));
            }
        }
        warnings
    }
}

/// Whether `host` is this machine.
fn is_loopback(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Validated settings for `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address or host name to listen on; a name is resolved when binding.
    pub host: String,
    pub port: u16,
    pub keys: ApiKeys,
    /// Least time between two syncs asked for through the API.
    pub refresh_min_interval: Duration,
    pub limits: ServerLimits,
    pub cache_file: PathBuf,
    /// Redis, when versions are shared between replicas.
    pub shared: Option<SharedSettings>,
    pub cors_allow_origins: Vec<String>,
    pub sync: Option<SyncSettings>,
    pub sync_interval: Option<Duration>,
    pub alerts: AlertSettings,
    /// The table's name where a version does not declare it, the key that overrides the
    /// declared one, and the change sets kept.
    pub cache: CacheSettings,
    pub query: QuerySettings,
}

/// An address or host name to listen on, from the setting `name`.
fn validate_host(name: &str, raw: &str) -> Result<String, ConfigError> {
    let host = raw.trim().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(ConfigError::new(format!(
            "{name}: {raw:?} is not an address or host name (e.g. 0.0.0.0, 127.0.0.1, ::, localhost)"
        )));
    }
    Ok(host.to_owned())
}

/// Validated settings for `worker`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Where the worker's `/health` and `/metrics` listen.
    pub host: String,
    pub port: u16,
    /// Keys `/metrics` takes (admin and metrics keys); empty: none asked for.
    pub keys: ApiKeys,
    pub cache_file: PathBuf,
    pub shared: Option<SharedSettings>,
    pub sync: SyncSettings,
    pub sync_interval: Duration,
    pub alerts: AlertSettings,
}

impl WorkerArgs {
    /// Checks the settings and builds the worker's configuration.
    pub fn validate(self) -> Result<WorkerConfig, ConfigError> {
        let (cache_file, shared) = self.cache.validate()?;
        let sync = self
            .pma
            .validate(&cache_file, true)?
            .ok_or_else(|| ConfigError::new("PMA_URL is not set"))?;
        if self.api_key.is_some() && self.admin_api_key.is_none() && self.metrics_key.is_none() {
            return Err(ConfigError::new(
                "API_KEY is set, but the worker's /metrics takes METRICS_KEY or ADMIN_API_KEY keys (API_KEY holds read keys, for data): set METRICS_KEY to what Prometheus sends, or unset API_KEY to leave /metrics open",
            ));
        }
        let keys = ApiKeys::parse(&[
            (Role::Admin, &self.admin_api_key),
            (Role::Metrics, &self.metrics_key),
        ])?;
        Ok(WorkerConfig {
            host: validate_host("WORKER_HOST", &self.worker_host)?,
            port: self.worker_port,
            keys,
            cache_file,
            shared,
            sync,
            sync_interval: self.sync_interval,
            alerts: self.alerts.validate(Some(self.sync_interval))?,
        })
    }
}

impl ServeArgs {
    /// Checks the settings and builds the server's configuration.
    pub fn validate(self) -> Result<ServeConfig, ConfigError> {
        let KeyArgs {
            api_key,
            admin_api_key,
            metrics_key,
            refresh_min_interval,
        } = self.keys;
        if api_key.is_none() && admin_api_key.is_none() {
            return Err(ConfigError::new(
                "API_KEY is not set: pass --api-key or set the API_KEY environment variable (read keys), and ADMIN_API_KEY for keys that also refresh and see /status details and /metrics",
            ));
        }
        let keys = ApiKeys::parse(&[
            (Role::Read, &api_key),
            (Role::Admin, &admin_api_key),
            (Role::Metrics, &metrics_key),
        ])?;
        let cors_allow_origins = match self.cors_allow_origins {
            None => Vec::new(),
            Some(list) => parse_origins(&list)?,
        };
        let (cache_file, shared) = self.cache.validate()?;
        let cache = CacheSettings {
            table: self.pma.pma_table.trim().to_owned(),
            key: self.pma.key()?,
            deltas: DeltaSettings {
                versions: self.delta_versions,
                memory_bytes: usize::try_from(self.delta_memory.as_u64()).unwrap_or(usize::MAX),
            },
            keep_only: false,
        };
        let sync = self.pma.validate(&cache_file, false)?;
        let query = self.query.validate()?;
        if self.sync_interval.is_some() && sync.is_none() {
            return Err(ConfigError::new(
                "SYNC_INTERVAL is set but PMA_URL is not: the schedule needs the phpMyAdmin settings",
            ));
        }
        Ok(ServeConfig {
            host: validate_host("HOST", &self.host)?,
            port: self.port,
            keys,
            refresh_min_interval,
            limits: self.limits.validate()?,
            cache_file,
            shared,
            cors_allow_origins,
            sync,
            sync_interval: self.sync_interval,
            alerts: self.alerts.validate(self.sync_interval)?,
            cache,
            query,
        })
    }
}

fn parse_origins(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut origins = Vec::new();
    for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(ConfigError::new(format!(
                "CORS_ALLOW_ORIGINS: {origin:?} is not an origin (expected e.g. https://app.example.com or *)"
            )));
        }
        origins.push(origin.trim_end_matches('/').to_owned());
    }
    Ok(origins)
}

/// Checks that the cache file names a file in a folder that exists.
pub fn validate_cache_file(path: PathBuf) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(ConfigError::new("CACHE_FILE must name a file"));
    }
    let dir = cache_dir(&path);
    if !dir.is_dir() {
        return Err(ConfigError::new(format!(
            "CACHE_FILE: the folder {} does not exist",
            dir.display()
        )));
    }
    Ok(path)
}

/// The folder that holds the cache file.
pub fn cache_dir(cache_file: &Path) -> PathBuf {
    match cache_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl PmaArgs {
    /// The columns PMA_KEY names, in order; `None` when it is unset or blank.
    pub fn key(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(raw) = self.pma_key.as_deref().filter(|k| !k.trim().is_empty()) else {
            return Ok(None);
        };
        let mut columns: Vec<String> = Vec::new();
        for column in raw.split(',').map(str::trim) {
            if column.is_empty() {
                return Err(ConfigError::new(format!(
                    "PMA_KEY {raw:?} has an empty column name: give column names separated by commas"
                )));
            }
            if columns.iter().any(|c| c == column) {
                return Err(ConfigError::new(format!(
                    "PMA_KEY names the column {column:?} twice"
                )));
            }
            columns.push(column.to_owned());
        }
        Ok(Some(columns))
    }

    /// Validates the phpMyAdmin settings. With `required` false, no PMA_URL means "no sync source".
    pub fn validate(
        self,
        cache_file: &Path,
        required: bool,
    ) -> Result<Option<SyncSettings>, ConfigError> {
        let key = self.key()?;
        let Some(raw_url) = self.pma_url.filter(|u| !u.trim().is_empty()) else {
            if required {
                return Err(ConfigError::new(
                    "PMA_URL is not set: pass --pma-url or set the PMA_URL environment variable",
                ));
            }
            return Ok(None);
        };
        let pma_url = parse_base_url("PMA_URL", &raw_url)?;
        let username = self
            .pma_username
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ConfigError::new("PMA_USERNAME is not set (needed with PMA_URL)"))?;
        let password = match (self.pma_password, self.pma_password_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "PMA_PASSWORD and PMA_PASSWORD_FILE are both set: use one",
                ))
            }
            (Some(p), None) => p,
            (None, Some(file)) => read_password_file(&file)?,
            (None, None) => {
                return Err(ConfigError::new(
                    "PMA_PASSWORD (or PMA_PASSWORD_FILE) is not set (needed with PMA_URL)",
                ))
            }
        };
        if password.expose().is_empty() {
            return Err(ConfigError::new(
                "PMA_PASSWORD is empty: phpMyAdmin refuses empty passwords by default",
            ));
        }
        let database = self
            .pma_database
            .filter(|d| !d.is_empty())
            .ok_or_else(|| ConfigError::new("PMA_DATABASE is not set (needed with PMA_URL)"))?;
        if self.pma_table.is_empty() {
            return Err(ConfigError::new("PMA_TABLE is empty"));
        }
        if !(0.0..=1.0).contains(&self.sync_min_row_ratio) {
            return Err(ConfigError::new(
                "SYNC_MIN_ROW_RATIO must be between 0 and 1",
            ));
        }
        let webdriver_url = match self.webdriver_url.filter(|u| !u.trim().is_empty()) {
            Some(u) => {
                let url = parse_base_url("WEBDRIVER_URL", &u)?;
                if url.scheme() != "http" {
                    return Err(ConfigError::new(
                        "WEBDRIVER_URL must be http:// (a WebDriver server on localhost or a private network)",
                    ));
                }
                Some(url.to_string())
            }
            None => None,
        };
        Ok(Some(SyncSettings {
            pma_url,
            username,
            password,
            database,
            table: self.pma_table,
            key,
            browser: BrowserSettings {
                webdriver_url,
                chromedriver_path: self.chromedriver_path,
                chrome_path: self.chrome_path,
            },
            timeout: self.sync_timeout,
            min_row_ratio: self.sync_min_row_ratio,
            force: self.force,
            failures_dir: cache_dir(cache_file).join("failures"),
            browser_idle_timeout: self.browser_idle_timeout,
            full_every: self.sync_full_every,
            cursor: self
                .sync_cursor
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty()),
            cursor_overlap: self.sync_cursor_overlap,
        }))
    }
}

fn parse_base_url(name: &str, raw: &str) -> Result<url::Url, ConfigError> {
    let mut url = url::Url::parse(raw.trim())
        .map_err(|e| ConfigError::new(format!("{name}: {raw:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(format!(
            "{name}: must start with http:// or https://"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(format!(
            "{name}: must not carry credentials; use PMA_USERNAME and PMA_PASSWORD"
        )));
    }
    // Keep the folder, drop a trailing `index.php` and any query, so relative routes join onto it.
    if url.path().ends_with("index.php") {
        let path = url.path().trim_end_matches("index.php").to_owned();
        url.set_path(&path);
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

fn read_password_file(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(format!(
            "PMA_PASSWORD_FILE: cannot read {}: {e}",
            path.display()
        ))
    })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let mut argv = vec!["pma-cache", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("arguments parse").command {
            Command::Serve(s) => s.validate(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_missing_api_key_names_the_variable() {
        let err = serve(&["--cache-file", "x.json"]).unwrap_err();
        assert!(err.to_string().contains("API_KEY"), "{err}");
    }

    /// A key long enough to be accepted.
    const K: &str = "read-key-0123456789";

    #[test]
    fn api_keys_split_on_commas_for_rotation() {
        let cfg = serve(&[
            "--api-key",
            "old-key-0123456789, new-key-0123456789,",
            "--cache-file",
            "x.json",
        ])
        .unwrap();
        let keys: Vec<(&str, Role)> = cfg.keys.iter().map(|(k, r)| (k.expose(), *r)).collect();
        assert_eq!(
            keys,
            [
                ("old-key-0123456789", Role::Read),
                ("new-key-0123456789", Role::Read)
            ]
        );
    }

    #[test]
    fn each_key_has_the_role_of_its_setting_and_one_only() {
        let cfg = serve(&[
            "--api-key",
            K,
            "--admin-api-key",
            "admin-key-0123456789",
            "--metrics-key",
            "metrics-key-0123456789",
            "--cache-file",
            "x.json",
        ])
        .unwrap();
        let roles: Vec<Role> = cfg.keys.iter().map(|(_, r)| *r).collect();
        assert_eq!(roles, [Role::Read, Role::Admin, Role::Metrics]);
        let err = serve(&[
            "--api-key",
            K,
            "--admin-api-key",
            K,
            "--cache-file",
            "x.json",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("also listed in API_KEY"), "{err}");
        // An admin key alone is enough to start.
        assert!(serve(&["--admin-api-key", K, "--cache-file", "x.json"]).is_ok());
    }

    #[test]
    fn a_worker_with_only_a_read_key_is_refused_rather_than_left_open() {
        let worker = |args: &[&str]| {
            let mut argv = vec!["pma-cache", "worker", "--cache-file", "x.json"];
            argv.extend_from_slice(&[
                "--pma-url",
                "http://127.0.0.1/",
                "--pma-username",
                "u",
                "--pma-password",
                "p",
                "--pma-database",
                "d",
            ]);
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).expect("arguments parse").command {
                Command::Worker(w) => w.validate(),
                _ => unreachable!(),
            }
        };
        let err = worker(&["--api-key", K]).unwrap_err();
        assert!(err.to_string().contains("METRICS_KEY"), "{err}");
        let cfg = worker(&["--api-key", K, "--metrics-key", "metrics-key-0123456789"]).unwrap();
        assert_eq!(cfg.keys.iter().count(), 1);
        assert!(worker(&[]).unwrap().keys.is_empty());
    }

    #[test]
    fn a_key_under_16_characters_is_refused_at_start() {
        let err = serve(&["--api-key", "change-me", "--cache-file", "x.json"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("API_KEY: a key of 9 characters is too short"),
            "{err}"
        );
        let err = serve(&[
            "--api-key",
            K,
            "--metrics-key",
            "0123456789abcde",
            "--cache-file",
            "x.json",
        ])
        .unwrap_err();
        assert!(err.to_string().starts_with("METRICS_KEY"), "{err}");
        assert!(serve(&["--api-key", "0123456789abcdef", "--cache-file", "x.json"]).is_ok());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn pma_url_without_password_is_refused() {
        let err = serve(&[
            "--api-key",
            K,
            "--cache-file",
            "x.json",
            "--pma-url",
            "http://h/pma",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("PMA_USERNAME"), "{err}");
    }

    #[test]
    fn pma_url_is_normalised_to_its_folder() {
        let url = parse_base_url("PMA_URL", "http://h:8/pma/index.php?route=/").unwrap();
        assert_eq!(url.as_str(), "http://h:8/pma/");
        let url = parse_base_url("PMA_URL", "http://h:8").unwrap();
        assert_eq!(url.as_str(), "http://h:8/");
        assert!(parse_base_url("PMA_URL", "ftp://h").is_err());
        assert!(parse_base_url("PMA_URL", "http://u:p@h/").is_err());
    }

    #[test]
    fn an_https_webdriver_url_is_refused_at_start() {
        let err = serve(&[
            "--api-key",
            K,
            "--cache-file",
            "x.json",
            "--pma-url",
            "http://h/",
            "--pma-username",
            "u",
            "--pma-password",
            "p",
            "--pma-database",
            "d",
            "--webdriver-url",
            "https://grid.example:4444",
        ])
        .unwrap_err();
        assert!(err.to_string().starts_with("WEBDRIVER_URL"), "{err}");
    }

    #[test]
    fn cleartext_phpmyadmin_and_a_remote_webdriver_are_warned_of() {
        let settings = |pma: &str, webdriver: Option<&str>| {
            let mut args = vec![
                "--api-key",
                K,
                "--cache-file",
                "x.json",
                "--pma-url",
                pma,
                "--pma-username",
                "u",
                "--pma-password",
                "p",
                "--pma-database",
                "d",
            ];
            if let Some(w) = webdriver {
                args.extend(["--webdriver-url", w]);
            }
            serve(&args).unwrap().sync.unwrap().warnings()
        };
        assert!(settings("https://db.example/pma/", None).is_empty());
        assert!(settings("http://127.0.0.1:8080/", Some("http://localhost:4444")).is_empty());
        let warned = settings("http://db.example/pma/", Some("http://grid.internal:4444"));
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(
            warned[0].starts_with("PMA_URL is http:// on db.example"),
            "{warned:?}"
        );
        assert!(
            warned[1].starts_with("WEBDRIVER_URL points at grid.internal"),
            "{warned:?}"
        );
    }

    #[test]
    fn a_cache_file_in_a_missing_folder_is_refused() {
        let err = serve(&["--api-key", K, "--cache-file", "/no/such/dir/c.json"]).unwrap_err();
        assert!(err.to_string().contains("CACHE_FILE"), "{err}");
    }

    #[test]
    fn booleans_accept_one_zero_true_false_yes_no_in_any_case() {
        for (text, value) in [("1", true), ("TRUE", true), ("Yes", true), ("0", false)] {
            assert_eq!(EnvBool::parse(text), Some(value), "{text}");
        }
        for text in ["no", "False", " false "] {
            assert_eq!(EnvBool::parse(text), Some(false), "{text}");
        }
        for text in ["", "maybe", "2", "on"] {
            assert_eq!(EnvBool::parse(text), None, "{text}");
        }
    }

    #[test]
    fn the_force_flag_alone_or_with_a_value() {
        let sync = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Sync(s) => s.pma.force,
            _ => unreachable!(),
        };
        assert!(!sync(&["pma-cache", "sync"]));
        assert!(sync(&["pma-cache", "sync", "--force"]));
        assert!(!sync(&["pma-cache", "sync", "--force=no"]));
        let err = Cli::try_parse_from(["pma-cache", "sync", "--force=maybe"]).unwrap_err();
        assert!(err.to_string().contains("SYNC_FORCE (--force)"), "{err}");
    }

    #[test]
    fn help_lists_every_variable_and_rust_log() {
        let mut cli = Cli::command();
        assert!(cli.render_long_help().to_string().contains("RUST_LOG"));
        for sub in cli.get_subcommands_mut().filter(|s| s.get_name() != "help") {
            let name = sub.get_name().to_owned();
            for arg in sub.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                assert!(
                    builtin || arg.is_positional() || arg.get_env().is_some(),
                    "{name} --{}: no environment variable",
                    arg.get_id()
                );
            }
            assert!(
                sub.render_long_help().to_string().contains("RUST_LOG"),
                "{name} --help"
            );
        }
    }

    #[test]
    fn host_takes_names_and_addresses() {
        let host = |h: &str| serve(&["--api-key", K, "--cache-file", "x.json", "--host", h]);
        assert_eq!(host("localhost").unwrap().host, "localhost");
        assert_eq!(host("[::1]").unwrap().host, "::1");
        assert!(host("http://x/").is_err());
    }

    #[test]
    fn cors_origins_must_look_like_origins() {
        assert!(parse_origins("https://a.example, http://b:3000/").is_ok());
        assert!(parse_origins("a.example").is_err());
    }
}
