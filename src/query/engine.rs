//! Where queries run: DataFusion over the typed view of the served version, on threads of their
//! own, a few at a time, each stopped at QUERY_TIMEOUT and within QUERY_MEMORY, with answers
//! kept per version.
//!
//! - Threads: a Tokio runtime of QUERY_CONCURRENCY worker threads, apart from the API's, so a
//!   heavy query never slows `/fetch-data` or an event stream. A semaphore lets
//!   QUERY_CONCURRENCY queries run at once; the others wait, within their time limit.
//! - Time: the API side waits QUERY_TIMEOUT and then aborts the query's task, which drops its
//!   streams and frees its memory.
//! - Memory: every query's sorts, groups and joins draw from one pool of QUERY_MEMORY with no
//!   disk to spill to: a query that needs more fails with a clear error and the others go on.
//! - Versions: one engine session per served version, built on first use from the version's
//!   typed view; answers are kept by version and request, so a new version (never a time)
//!   invalidates them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ParamValues, ScalarValue, TableReference};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use tokio::sync::Semaphore;

use super::encode::{json_answer, stream_answer, Format, Shape};
use super::provider::VersionTable;
use super::rows::{self, RowsRequest};
use super::sql;
use super::text::RowTexts;
use crate::cache::schema::stable_hash;
use crate::cache::{Snapshot, TypedTable};
use crate::config::QuerySettings;

/// What a client asks.
#[derive(Debug, Clone)]
pub enum Question {
    /// Read-only SQL with its bound parameters (`$1`, `$2`…).
    Sql { sql: String, params: Vec<Param> },
    /// Rows of the table, filtered, sorted and paged (`/tables/{table}`).
    Rows(RowsRequest),
}

/// A bound parameter: text (typed by where it is used) or a JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Null,
}

/// A question in a format.
#[derive(Debug, Clone)]
pub struct Ask {
    pub question: Question,
    pub format: Format,
    pub shape: Shape,
}

impl Ask {
    /// The answer cache's key within a version.
    fn key(&self) -> String {
        format!("{:?}|{:?}|{:?}", self.question, self.format, self.shape)
    }
}

/// An answer, ready to send.
#[derive(Debug)]
pub struct Answer {
    pub body: Bytes,
    pub content_type: &'static str,
    /// A strong validator: the version's and the question's.
    pub etag: String,
    pub rows: usize,
    pub truncated: bool,
}

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The question is wrong: bad SQL, a refused statement, an unknown column, a bad value.
    #[error("{0}")]
    Bad(String),
    #[error("the query ran longer than QUERY_TIMEOUT ({0:?}) and was stopped")]
    Timeout(std::time::Duration),
    #[error("the query needs more memory than QUERY_MEMORY allows: {0}")]
    Memory(String),
    /// No row has the key asked for.
    #[error("{0}")]
    NotFound(String),
    /// No version is served, or its typed view could not be built.
    #[error("{0}")]
    Unavailable(String),
    #[error("the query failed: {0}")]
    Internal(String),
}

impl From<sql::Refused> for QueryError {
    fn from(r: sql::Refused) -> Self {
        Self::Bad(r.0)
    }
}

/// Classifies an engine error: the client's mistake, memory, or ours.
pub fn engine_error(e: DataFusionError) -> QueryError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(m) => QueryError::Memory(m.clone()),
        DataFusionError::Internal(m) => QueryError::Internal(m.clone()),
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..) => QueryError::Bad(e.find_root().to_string()),
        _ => QueryError::Bad(e.to_string()),
    }
}

/// The engine session of one version.
struct Session {
    etag: String,
    context: SessionContext,
    view: Arc<TypedTable>,
    /// The table `/tables` reads: the view's columns and each row's number.
    rows: Arc<VersionTable>,
}

type Answers = quick_cache::sync::Cache<(String, String), Arc<Answer>, AnswerWeight>;

#[derive(Clone)]
struct AnswerWeight;

impl quick_cache::Weighter<(String, String), Arc<Answer>> for AnswerWeight {
    fn weight(&self, key: &(String, String), answer: &Arc<Answer>) -> u64 {
        (key.0.len() + key.1.len() + answer.body.len() + 128) as u64
    }
}

/// Runs questions against the served version.
pub struct QueryEngine {
    settings: QuerySettings,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    permits: Arc<Semaphore>,
    env: Arc<RuntimeEnv>,
    session: Mutex<Option<Arc<Session>>>,
    answers: Option<Answers>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl QueryEngine {
    /// Starts the query threads.
    pub fn new(settings: QuerySettings) -> anyhow::Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.concurrency)
            .thread_name("query")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(settings.memory_bytes)))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let answers = (settings.cache_bytes > 0)
            .then(|| Answers::with_weighter(1024, settings.cache_bytes, AnswerWeight));
        Ok(Arc::new(Self {
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            settings,
            runtime: Mutex::new(Some(runtime)),
            handle,
            env,
            session: Mutex::new(None),
            answers,
        }))
    }

    /// The limits queries run under.
    pub fn settings(&self) -> &QuerySettings {
        &self.settings
    }

    /// Stops the query threads; a query still running is dropped.
    pub fn shutdown(&self) {
        let runtime = self.runtime.lock().expect("query runtime lock").take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }

    /// Answers `ask` on `snapshot`'s version.
    pub async fn answer(
        &self,
        snapshot: &Arc<Snapshot>,
        ask: Ask,
    ) -> Result<Arc<Answer>, QueryError> {
        let started = Instant::now();
        let view = snapshot.typed().cloned().ok_or_else(|| {
            QueryError::Unavailable(
                "the served version has no typed view (see the log for why); queries answer \
                 again with the next version"
                    .into(),
            )
        })?;
        let key = ask.key();
        let digest = format!("{:016x}", stable_hash(key.as_bytes()));
        let cache_key = (snapshot.etag.clone(), key);
        // One evaluation per version and question: askers of the same question on the same
        // version while it runs (live queries' subscribers when a version lands) wait for its
        // answer, within their own QUERY_TIMEOUT.
        let guard = match &self.answers {
            Some(answers) => {
                let waited = tokio::time::timeout(
                    self.settings.timeout,
                    answers.get_value_or_guard_async(&cache_key),
                )
                .await
                .map_err(|_| QueryError::Timeout(self.settings.timeout))?;
                match waited {
                    Ok(answer) => {
                        tracing::debug!(query = %digest, rows = answer.rows, "answered from the answer cache");
                        return Ok(answer);
                    }
                    Err(guard) => Some(guard),
                }
            }
            None => None,
        };
        let etag = format!(
            "\"q{:016x}{}\"",
            stable_hash(snapshot.etag.as_bytes()),
            &digest
        );
        let session = self.session_for(snapshot, view)?;
        let settings = self.settings.clone();
        let version = Arc::clone(snapshot);
        let timeout = settings.timeout;
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| QueryError::Unavailable("the server is shutting down".into()))?;
            let task = self
                .handle
                .spawn(async move { run(&session, &version, ask, &settings, etag).await });
            let abort = task.abort_handle();
            // Dropped on timeout: the query's task is aborted with it.
            let _abort_on_drop = AbortOnDrop(abort);
            task.await
                .map_err(|e| QueryError::Internal(e.to_string()))?
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(QueryError::Timeout(timeout)),
        };
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(answer) => {
                tracing::info!(query = %digest, rows = answer.rows, bytes = answer.body.len(), seconds, "query answered");
                let answer = Arc::new(answer);
                if let Some(guard) = guard {
                    let _ = guard.insert(Arc::clone(&answer));
                }
                Ok(answer)
            }
            Err(e) => {
                tracing::info!(query = %digest, seconds, "query refused or failed: {e}");
                Err(e)
            }
        }
    }

    /// The session of `snapshot`'s version, built on first use.
    fn session_for(
        &self,
        snapshot: &Snapshot,
        view: Arc<TypedTable>,
    ) -> Result<Arc<Session>, QueryError> {
        let mut current = self.session.lock().expect("query session lock");
        if let Some(session) = current.as_ref().filter(|s| s.etag == snapshot.etag) {
            return Ok(Arc::clone(session));
        }
        let config = SessionConfig::new()
            .with_target_partitions(self.settings.concurrency.max(2))
            .with_information_schema(false)
            .set_str("datafusion.sql_parser.dialect", "mysql")
            .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
        let context = SessionContext::new_with_config_rt(config, Arc::clone(&self.env));
        let table = VersionTable::new(Arc::clone(&view), false).map_err(engine_error)?;
        context
            .register_table(
                TableReference::bare(view.schema.table.as_str()),
                Arc::new(table),
            )
            .map_err(engine_error)?;
        let rows = Arc::new(VersionTable::new(Arc::clone(&view), true).map_err(engine_error)?);
        let session = Arc::new(Session {
            etag: snapshot.etag.clone(),
            context,
            view,
            rows,
        });
        *current = Some(Arc::clone(&session));
        Ok(session)
    }
}

impl Drop for QueryEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Plans, runs and encodes one question, on the query threads.
async fn run(
    session: &Session,
    snapshot: &Snapshot,
    ask: Ask,
    settings: &QuerySettings,
    etag: String,
) -> Result<Answer, QueryError> {
    let mut text = false;
    let (frame, page) = match ask.question {
        Question::Sql { sql, params } => (plan_sql(session, &sql, params).await?, None),
        Question::Rows(request) => {
            text = request.text;
            if let Some(batch) = rows::by_key(session.rows.batch(), &session.view, &request)? {
                let schema = batch.schema();
                return finish(
                    snapshot,
                    &ask.format,
                    ask.shape,
                    text,
                    schema,
                    vec![batch],
                    settings,
                    None,
                    etag,
                );
            }
            let table = session
                .context
                .read_table(Arc::clone(&session.rows) as Arc<dyn TableProvider>)
                .map_err(engine_error)?;
            rows::plan(table, &session.view, &request, settings.max_rows)?
        }
    };
    let capped = ask.format.is_capped() && page.is_none();
    let frame = if capped {
        frame
            .limit(0, Some(settings.max_rows + 1))
            .map_err(engine_error)?
    } else {
        frame
    };
    let task = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await.map_err(engine_error)?;
    let plan = yielding_joins(plan).map_err(engine_error)?;
    let schema: SchemaRef = plan.schema();
    let mut batches: Vec<RecordBatch> = datafusion::physical_plan::collect(plan, task)
        .await
        .map_err(engine_error)?;
    let next = page.as_ref().and_then(|p| p.finish(&mut batches));
    finish(
        snapshot,
        &ask.format,
        ask.shape,
        text,
        schema,
        batches,
        settings,
        next,
        etag,
    )
}

/// Encodes an answer's rows, as their exported text when asked.
#[allow(clippy::too_many_arguments)]
fn finish(
    snapshot: &Snapshot,
    format: &Format,
    shape: Shape,
    text: bool,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    settings: &QuerySettings,
    next: Option<String>,
    etag: String,
) -> Result<Answer, QueryError> {
    let (schema, batches) = if text {
        RowTexts::new(snapshot).as_text(&schema, &batches)?
    } else {
        (schema, batches)
    };
    encode(
        *format,
        shape,
        &schema,
        &batches,
        &snapshot.etag,
        settings.max_rows,
        next,
        etag,
    )
}

/// Makes every join yield to the runtime after each batch it makes. A join can make millions of
/// rows from one input batch; without a pause between them, a query stopped at QUERY_TIMEOUT
/// would go on holding a query thread until its inputs next paused (the engine's own yield
/// points sit at the table scans).
fn yielding_joins(
    plan: Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if node.name().contains("Join") {
            Ok(Transformed::yes(
                Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        } else {
            Ok(Transformed::no(node))
        }
    })
    .map(|t| t.data)
}

/// Writes `batches` in `format`.
#[allow(clippy::too_many_arguments)]
pub(super) fn encode(
    format: Format,
    shape: Shape,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    version: &str,
    max_rows: usize,
    next: Option<String>,
    etag: String,
) -> Result<Answer, QueryError> {
    let internal = |e: anyhow::Error| QueryError::Internal(format!("{e:#}"));
    let (body, rows, truncated) = if format == Format::Json {
        json_answer(schema, batches, version, shape, max_rows, next.as_deref()).map_err(internal)?
    } else {
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        (
            stream_answer(format, schema, batches, shape).map_err(internal)?,
            rows,
            false,
        )
    };
    Ok(Answer {
        body,
        content_type: format.content_type(),
        etag,
        rows,
        truncated,
    })
}

/// Plans read-only SQL with its parameters bound.
async fn plan_sql(
    session: &Session,
    sql: &str,
    params: Vec<Param>,
) -> Result<DataFrame, QueryError> {
    let statement = sql::prepare(sql)?;
    let state = session.context.state();
    let plan = state
        .statement_to_plan(DfStatement::Statement(Box::new(statement)))
        .await
        .map_err(engine_error)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| QueryError::Bad(format!("only read-only queries are allowed: {e}")))?;
    let types = plan.get_parameter_types().map_err(engine_error)?;
    if types.len() != params.len() {
        return Err(QueryError::Bad(format!(
            "the SQL has {} parameter{} ($1, $2…) but {} value{} given (as p=… or params)",
            types.len(),
            if types.len() == 1 { "" } else { "s" },
            params.len(),
            if params.len() == 1 { " was" } else { "s were" },
        )));
    }
    let plan = if params.is_empty() {
        plan
    } else {
        let mut values = Vec::with_capacity(params.len());
        for (i, param) in params.into_iter().enumerate() {
            let wanted = types.get(&format!("${}", i + 1)).cloned().flatten();
            values.push(bind(param, wanted.as_ref(), i + 1)?);
        }
        plan.with_param_values(ParamValues::from(values))
            .map_err(engine_error)?
    };
    session
        .context
        .execute_logical_plan(plan)
        .await
        .map_err(engine_error)
}

/// A parameter's value, of the type its place in the SQL wants when the engine knows it.
fn bind(param: Param, wanted: Option<&DataType>, n: usize) -> Result<ScalarValue, QueryError> {
    let value = match param {
        Param::Null => {
            return Ok(wanted.map_or(ScalarValue::Null, |t| {
                ScalarValue::try_from(t).unwrap_or(ScalarValue::Null)
            }))
        }
        Param::Text(s) => ScalarValue::Utf8(Some(s)),
        Param::Integer(i) => ScalarValue::Int64(Some(i)),
        Param::Float(f) => ScalarValue::Float64(Some(f)),
        Param::Bool(b) => ScalarValue::Boolean(Some(b)),
    };
    match wanted {
        Some(t) if *t != value.data_type() => value.cast_to(t).map_err(|_| {
            QueryError::Bad(format!(
                "parameter ${n} ({value}) is not a valid {}",
                super::encode::type_name(t)
            ))
        }),
        _ => Ok(value),
    }
}
