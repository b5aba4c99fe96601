//! Portable SQL over both engines, for tables whose queries are written once (the visitors'):
//! values and rows as plain enums, a connection and its transaction behind one trait.
//!
//! The dialect is PostgreSQL's where both engines agree: `$1`-style placeholders,
//! `IS NOT DISTINCT FROM`, `INSERT ... ON CONFLICT ... DO UPDATE`, `RETURNING`, `LEAST`/`GREATEST`.
//! The SQLite side rewrites the two spellings SQLite lacks (`$n` becomes `?n`, `LEAST(`/`GREATEST(`
//! become its two-argument `MIN(`/`MAX(`); everything else is passed as written. On PostgreSQL every
//! statement is prepared once per connection and each value is converted to the type the server
//! infers for its placeholder, so one `Val::Int` serves BIGINT and INTEGER columns alike.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::postgres::{blocking, open_client};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Engine(String),
    #[error("column {column}: expected {expected}, found {found}")]
    Type { column: usize, expected: &'static str, found: String },
    #[error("the query returned no row")]
    NoRow,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Engine(e.to_string())
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        DbError::Engine(match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        })
    }
}

impl From<super::store::StoreError> for DbError {
    fn from(e: super::store::StoreError) -> Self {
        DbError::Engine(e.to_string())
    }
}

/// One value, as both engines hold it.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<u64> for Val {
    fn from(v: u64) -> Self {
        Val::Int(v as i64)
    }
}
impl From<f32> for Val {
    fn from(v: f32) -> Self {
        Val::Real(v as f64)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(v.clone())
    }
}
impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Self {
        Val::Blob(v)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// `vals![a, b, c]`: the parameters of one statement.
#[macro_export]
macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$($crate::gallery::sql::Val::from($v)),*][..] };
}

/// One result row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row(pub Vec<Val>);

impl Row {
    fn at(&self, k: usize) -> &Val {
        self.0.get(k).unwrap_or(&Val::Null)
    }

    fn mismatch(&self, k: usize, expected: &'static str) -> DbError {
        DbError::Type { column: k, expected, found: format!("{:?}", self.at(k)) }
    }

    pub fn opt_i64(&self, k: usize) -> Result<Option<i64>, DbError> {
        match self.at(k) {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v)),
            _ => Err(self.mismatch(k, "an integer")),
        }
    }

    pub fn i64(&self, k: usize) -> Result<i64, DbError> {
        self.opt_i64(k)?.ok_or_else(|| self.mismatch(k, "an integer"))
    }

    pub fn opt_u64(&self, k: usize) -> Result<Option<u64>, DbError> {
        Ok(self.opt_i64(k)?.map(|v| v as u64))
    }

    pub fn u64(&self, k: usize) -> Result<u64, DbError> {
        Ok(self.i64(k)? as u64)
    }

    pub fn f64(&self, k: usize) -> Result<f64, DbError> {
        match self.at(k) {
            Val::Real(v) => Ok(*v),
            Val::Int(v) => Ok(*v as f64),
            _ => Err(self.mismatch(k, "a number")),
        }
    }

    pub fn opt_text(&self, k: usize) -> Result<Option<String>, DbError> {
        match self.at(k) {
            Val::Null => Ok(None),
            Val::Text(s) => Ok(Some(s.clone())),
            _ => Err(self.mismatch(k, "text")),
        }
    }

    pub fn text(&self, k: usize) -> Result<String, DbError> {
        self.opt_text(k)?.ok_or_else(|| self.mismatch(k, "text"))
    }

    pub fn opt_blob(&self, k: usize) -> Result<Option<Vec<u8>>, DbError> {
        match self.at(k) {
            Val::Null => Ok(None),
            Val::Blob(b) => Ok(Some(b.clone())),
            _ => Err(self.mismatch(k, "bytes")),
        }
    }

    pub fn blob(&self, k: usize) -> Result<Vec<u8>, DbError> {
        self.opt_blob(k)?.ok_or_else(|| self.mismatch(k, "bytes"))
    }
}

/// Statements, on a connection or inside a transaction.
pub trait Sql {
    /// Runs a statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<usize, DbError>;
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError>;

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Val]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Exactly one row expected.
    fn query_one(&mut self, sql: &str, params: &[Val]) -> Result<Row, DbError> {
        self.query_opt(sql, params)?.ok_or(DbError::NoRow)
    }
}

pub trait SqlTx: Sql {
    fn commit(self: Box<Self>) -> Result<(), DbError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub trait SqlConn: Sql + Send {
    fn begin(&mut self) -> Result<Box<dyn SqlTx + '_>, DbError>;
    fn engine(&self) -> Engine;
    /// A statement run inside every transaction just before it commits (PostgreSQL only: how a
    /// writer marks its commits; see the visitors' store).
    fn set_commit_hook(&mut self, sql: String, params: Vec<Val>);
}

// ---------------------------------------------------------------------------------------------
// SQLite

/// `$n` to `?n`, `LEAST(`/`GREATEST(` to `MIN(`/`MAX(` (outside string literals).
pub fn sqlite_dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_str = false;
    let mut rest = sql;
    while let Some(c) = rest.chars().next() {
        if c == '\'' {
            in_str = !in_str;
        } else if !in_str {
            if c == '$' && rest[1..].starts_with(|d: char| d.is_ascii_digit()) {
                out.push('?');
                rest = &rest[1..];
                continue;
            }
            let word = |w: &str| rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w);
            if word("LEAST(") {
                out.push_str("MIN(");
                rest = &rest[6..];
                continue;
            }
            if word("GREATEST(") {
                out.push_str("MAX(");
                rest = &rest[9..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Null => ValueRef::Null,
            Val::Int(v) => ValueRef::Integer(*v),
            Val::Real(v) => ValueRef::Real(*v),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sqlite_exec(c: &rusqlite::Connection, sql: &str, params: &[Val]) -> Result<usize, DbError> {
    let mut st = c.prepare_cached(&sqlite_dialect(sql))?;
    Ok(st.execute(rusqlite::params_from_iter(params.iter()))?)
}

fn sqlite_query(c: &rusqlite::Connection, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError> {
    use rusqlite::types::ValueRef;
    let mut st = c.prepare_cached(&sqlite_dialect(sql))?;
    let n = st.column_count();
    let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut vals = Vec::with_capacity(n);
        for k in 0..n {
            vals.push(match r.get_ref(k)? {
                ValueRef::Null => Val::Null,
                ValueRef::Integer(v) => Val::Int(v),
                ValueRef::Real(v) => Val::Real(v),
                ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Val::Blob(b.to_vec()),
            });
        }
        out.push(Row(vals));
    }
    Ok(out)
}

pub struct SqliteConn {
    conn: rusqlite::Connection,
}

impl SqliteConn {
    pub fn open(path: &Path) -> Result<Self, String> {
        Ok(Self { conn: super::sqlite::open_sqlite(path)? })
    }

    /// The underlying connection (engine-specific statements such as `PRAGMA`).
    pub fn raw(&self) -> &rusqlite::Connection {
        &self.conn
    }
}

impl Sql for SqliteConn {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<usize, DbError> {
        sqlite_exec(&self.conn, sql, params)
    }
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError> {
        sqlite_query(&self.conn, sql, params)
    }
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

impl Sql for SqliteTx<'_> {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<usize, DbError> {
        sqlite_exec(&self.0, sql, params)
    }
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError> {
        sqlite_query(&self.0, sql, params)
    }
}

impl SqlTx for SqliteTx<'_> {
    fn commit(self: Box<Self>) -> Result<(), DbError> {
        Ok(self.0.commit()?)
    }
}

impl SqlConn for SqliteConn {
    fn begin(&mut self) -> Result<Box<dyn SqlTx + '_>, DbError> {
        Ok(Box::new(SqliteTx(self.conn.transaction()?)))
    }
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }
    fn set_commit_hook(&mut self, _sql: String, _params: Vec<Val>) {}
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

type Cache = HashMap<String, postgres::Statement>;

/// A value as the type the server inferred for its placeholder.
fn pg_param(v: &Val, ty: &postgres::types::Type) -> Result<Box<dyn postgres::types::ToSql + Sync>, DbError> {
    use postgres::types::Type;
    let bad = || DbError::Engine(format!("parameter {v:?} does not fit a {ty} placeholder"));
    Ok(match (v, ty) {
        (Val::Null, &Type::INT8) => Box::new(None::<i64>),
        (Val::Null, &Type::INT4) => Box::new(None::<i32>),
        (Val::Null, &Type::FLOAT8) => Box::new(None::<f64>),
        (Val::Null, &Type::FLOAT4) => Box::new(None::<f32>),
        (Val::Null, &Type::BYTEA) => Box::new(None::<Vec<u8>>),
        (Val::Null, &Type::BOOL) => Box::new(None::<bool>),
        (Val::Null, _) => Box::new(None::<String>),
        (Val::Int(i), &Type::INT8) => Box::new(*i),
        (Val::Int(i), &Type::INT4) => Box::new(i32::try_from(*i).map_err(|_| bad())?),
        (Val::Int(i), &Type::FLOAT8) => Box::new(*i as f64),
        (Val::Int(i), &Type::BOOL) => Box::new(*i != 0),
        (Val::Real(f), &Type::FLOAT8) => Box::new(*f),
        (Val::Real(f), &Type::FLOAT4) => Box::new(*f as f32),
        (Val::Text(s), _) if *ty != Type::BYTEA && *ty != Type::INT8 && *ty != Type::INT4 => Box::new(s.clone()),
        (Val::Blob(b), &Type::BYTEA) => Box::new(b.clone()),
        _ => return Err(bad()),
    })
}

fn pg_row(r: &postgres::Row) -> Result<Row, DbError> {
    use postgres::types::Type;
    let mut vals = Vec::with_capacity(r.len());
    for (k, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(k)?.map(Val::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(k)?.map(|v| Val::Int(v as i64))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(k)?.map(|v| Val::Int(v as i64))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(k)?.map(|v| Val::Int(v as i64))
        } else if *ty == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(k)?.map(Val::Real)
        } else if *ty == Type::FLOAT4 {
            r.try_get::<_, Option<f32>>(k)?.map(|v| Val::Real(v as f64))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(k)?.map(Val::Blob)
        } else {
            r.try_get::<_, Option<String>>(k)?.map(Val::Text)
        };
        vals.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(vals))
}

fn pg_prepare<C: postgres::GenericClient>(c: &mut C, cache: &mut Cache, sql: &str) -> Result<postgres::Statement, DbError> {
    if let Some(st) = cache.get(sql) {
        return Ok(st.clone());
    }
    let st = c.prepare(sql)?;
    cache.insert(sql.to_string(), st.clone());
    Ok(st)
}

fn pg_args(st: &postgres::Statement, params: &[Val]) -> Result<Vec<Box<dyn postgres::types::ToSql + Sync>>, DbError> {
    if st.params().len() != params.len() {
        return Err(DbError::Engine(format!("the statement takes {} parameter(s), {} given", st.params().len(), params.len())));
    }
    params.iter().zip(st.params()).map(|(v, ty)| pg_param(v, ty)).collect()
}

fn pg_exec<C: postgres::GenericClient>(c: &mut C, cache: &mut Cache, sql: &str, params: &[Val]) -> Result<usize, DbError> {
    blocking(|| {
        let st = pg_prepare(c, cache, sql)?;
        let args = pg_args(&st, params)?;
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = args.iter().map(|b| b.as_ref()).collect();
        Ok(c.execute(&st, &refs)? as usize)
    })
}

fn pg_query<C: postgres::GenericClient>(c: &mut C, cache: &mut Cache, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError> {
    blocking(|| {
        let st = pg_prepare(c, cache, sql)?;
        let args = pg_args(&st, params)?;
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = args.iter().map(|b| b.as_ref()).collect();
        c.query(&st, &refs)?.iter().map(pg_row).collect()
    })
}

pub struct PgConn {
    url: String,
    client: postgres::Client,
    cache: Cache,
    last_used: Instant,
    hook: Option<(String, Vec<Val>)>,
}

impl PgConn {
    /// Connects (and applies the migrations this database lacks).
    pub fn connect(url: &str) -> Result<Self, DbError> {
        let mut client = open_client(url)?;
        super::postgres::migrate(&mut client)?;
        Ok(Self { url: url.to_string(), client, cache: Cache::new(), last_used: Instant::now(), hook: None })
    }

    /// A connection idle for a while may have lost its server (restarted) without noticing:
    /// checked before use, and opened again when broken.
    fn ready(&mut self) -> Result<(), DbError> {
        let idle = self.last_used.elapsed() > Duration::from_secs(1);
        self.last_used = Instant::now();
        if super::postgres::reopen_if_broken(&mut self.client, &self.url, idle, "visitors'")? {
            // Statements are prepared per connection.
            self.cache.clear();
        }
        Ok(())
    }
}

impl Sql for PgConn {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<usize, DbError> {
        self.ready()?;
        pg_exec(&mut self.client, &mut self.cache, sql, params)
    }
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError> {
        self.ready()?;
        pg_query(&mut self.client, &mut self.cache, sql, params)
    }
}

struct PgTx<'a> {
    tx: postgres::Transaction<'a>,
    cache: &'a mut Cache,
    hook: Option<&'a (String, Vec<Val>)>,
}

impl Sql for PgTx<'_> {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<usize, DbError> {
        pg_exec(&mut self.tx, self.cache, sql, params)
    }
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, DbError> {
        pg_query(&mut self.tx, self.cache, sql, params)
    }
}

impl SqlTx for PgTx<'_> {
    fn commit(self: Box<Self>) -> Result<(), DbError> {
        let PgTx { mut tx, cache, hook } = *self;
        if let Some((sql, params)) = hook {
            pg_exec(&mut tx, cache, sql, params)?;
        }
        Ok(blocking(|| tx.commit())?)
    }
}

impl SqlConn for PgConn {
    fn begin(&mut self) -> Result<Box<dyn SqlTx + '_>, DbError> {
        self.ready()?;
        let PgConn { client, cache, hook, .. } = self;
        let tx = blocking(|| client.transaction())?;
        Ok(Box::new(PgTx { tx, cache, hook: hook.as_ref() }))
    }
    fn engine(&self) -> Engine {
        Engine::Postgres
    }
    fn set_commit_hook(&mut self, sql: String, params: Vec<Val>) {
        self.hook = Some((sql, params));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_dialect_rewrites_placeholders_and_least_outside_strings() {
        assert_eq!(sqlite_dialect("UPDATE v SET a = LEAST(a, $2), b = greatest(b, $10) WHERE id = $1 AND s = '$1 LEAST('"), "UPDATE v SET a = MIN(a, ?2), b = MAX(b, ?10) WHERE id = ?1 AND s = '$1 LEAST('");
        assert_eq!(sqlite_dialect("SELECT $ FROM t"), "SELECT $ FROM t");
    }

    #[test]
    fn rows_convert_and_name_a_wrong_type() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SqliteConn::open(&dir.path().join("t.db")).unwrap();
        c.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, q REAL, s TEXT, b BLOB)", &[]).unwrap();
        let mut tx = c.begin().unwrap();
        let id = tx.query_one("INSERT INTO t (n, q, s, b) VALUES ($1, $2, $3, $4) RETURNING id", crate::vals![None::<i64>, 0.5f32, "x", vec![1u8, 2]]).unwrap().i64(0).unwrap();
        tx.commit().unwrap();
        let r = c.query_one("SELECT n, q, s, b FROM t WHERE id = $1", crate::vals![id]).unwrap();
        assert_eq!((r.opt_i64(0).unwrap(), r.f64(1).unwrap(), r.text(2).unwrap(), r.blob(3).unwrap()), (None, 0.5, "x".to_string(), vec![1, 2]));
        assert!(matches!(r.i64(2), Err(DbError::Type { column: 2, .. })));
        assert!(c.query_opt("SELECT n FROM t WHERE id = $1", crate::vals![id + 1]).unwrap().is_none());
    }
}
