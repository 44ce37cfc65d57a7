//! The table's columns as MySQL declares them, read from its `CREATE TABLE`: each column's
//! MySQL type and nullability, and the primary key. It travels with each version (in its
//! record, on disk and in Redis) and decides the typed view's types (see [`super::typed`]).
//!
//! The `CREATE TABLE` comes from phpMyAdmin's structure-only SQL export (or `import --schema`),
//! which surrounds it with `SET` lines, comments and, on phpMyAdmin, the keys as separate
//! `ALTER TABLE … ADD PRIMARY KEY` statements. The text is cut into statements by the SQL
//! tokenizer (so a `;` inside a comment or a default value is no boundary) and each statement is
//! parsed on its own with the MySQL dialect: statements other than the table's are skipped.

use anyhow::{anyhow, Context};
use datafusion::sql::sqlparser::ast::{
    AlterTableOperation, ColumnOption, Expr, Statement, TableConstraint,
};
use datafusion::sql::sqlparser::dialect::MySqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use serde::{Deserialize, Serialize};

/// The declared structure of the cached table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The table's name.
    pub table: String,
    pub columns: Vec<ColumnSchema>,
    /// The primary key's columns, in key order; empty when the table has none.
    pub key: Vec<String>,
}

/// One column as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    /// The MySQL type as `SHOW CREATE TABLE` writes it, lower case (`decimal(10,2)`,
    /// `bigint(20) unsigned`).
    pub mysql_type: String,
    pub nullable: bool,
}

/// The type a column has in the typed view, decided by its MySQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Signed integers of every width (and `BOOL`, `YEAR`): 64-bit.
    Integer,
    /// `BIGINT UNSIGNED`: unsigned 64-bit, up to 18446744073709551615.
    Unsigned,
    /// `DECIMAL(p,s)` with `p <= 38`: exact.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// `FLOAT`, `DOUBLE`, `REAL`.
    Double,
    Date,
    /// `DATETIME` and `TIMESTAMP`, without a time zone (as MySQL shows them).
    DateTime,
    /// Everything else, and every column of a table whose types are unknown.
    Text,
}

impl ValueKind {
    /// The kind of a column of MySQL type `mysql_type` (as in a `CREATE TABLE`, any case).
    pub fn of_mysql_type(mysql_type: &str) -> Self {
        let lower = mysql_type.to_ascii_lowercase();
        let base: String = lower
            .trim()
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        let unsigned = lower.split_whitespace().any(|w| w == "unsigned");
        match base.as_str() {
            "bigint" if unsigned => Self::Unsigned,
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "bool"
            | "boolean" | "year" => Self::Integer,
            "decimal" | "numeric" | "dec" | "fixed" => {
                let (precision, scale) = type_arguments(&lower).unwrap_or((10, 0));
                match (u8::try_from(precision), i8::try_from(scale)) {
                    (Ok(precision), Ok(scale)) if (1..=38).contains(&precision) && scale >= 0 => {
                        Self::Decimal { precision, scale }
                    }
                    // Wider than an exact 128-bit decimal holds: kept as its text.
                    _ => Self::Text,
                }
            }
            "float" | "double" | "real" => Self::Double,
            "date" => Self::Date,
            "datetime" | "timestamp" => Self::DateTime,
            _ => Self::Text,
        }
    }

    /// The name `/tables` and query answers give this type.
    pub fn name(&self) -> String {
        match self {
            Self::Integer => "integer".into(),
            Self::Unsigned => "unsigned".into(),
            Self::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            Self::Double => "double".into(),
            Self::Date => "date".into(),
            Self::DateTime => "datetime".into(),
            Self::Text => "text".into(),
        }
    }
}

/// `(p, s)` of a type written `name(p,s)` or `name(p)`.
fn type_arguments(lower: &str) -> Option<(u32, i32)> {
    let inside = lower.split_once('(')?.1.split_once(')')?.0;
    let mut parts = inside.split(',').map(str::trim);
    let precision = parts.next()?.parse().ok()?;
    let scale = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    Some((precision, scale))
}

impl TableSchema {
    /// A table of `columns` whose types are unknown: every column is text, and there is no key.
    pub fn all_text(table: &str, columns: &[String]) -> Self {
        Self {
            table: table.to_owned(),
            columns: columns
                .iter()
                .map(|name| ColumnSchema {
                    name: name.clone(),
                    mysql_type: "text".into(),
                    nullable: true,
                })
                .collect(),
            key: Vec::new(),
        }
    }

    /// Reads the `CREATE TABLE` of `table` (or the only one, when `table` is `None`) from SQL
    /// such as phpMyAdmin's structure export, with the primary key declared inline or added by
    /// a later `ALTER TABLE`.
    pub fn from_sql(sql: &str, table: Option<&str>) -> anyhow::Result<Self> {
        let dialect = MySqlDialect {};
        let tokens = Tokenizer::new(&dialect, sql)
            .tokenize_with_location()
            .map_err(|e| anyhow!("the SQL cannot be read: {e}"))?;
        let mut found: Option<Self> = None;
        let mut alter_keys: Vec<(String, Vec<String>)> = Vec::new();
        let mut create_errors = Vec::new();
        for statement in tokens.split(|t| t.token == Token::SemiColon) {
            let meaningful = statement
                .iter()
                .any(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF));
            if !meaningful {
                continue;
            }
            let is_create = statement
                .iter()
                .find(|t| !matches!(t.token, Token::Whitespace(_)))
                .is_some_and(|t| matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case("create")));
            let parsed = Parser::new(&dialect)
                .with_tokens_with_locations(statement.to_vec())
                .parse_statement();
            match parsed {
                Ok(Statement::CreateTable(create)) => {
                    let name = last_ident(&create.name.to_string());
                    match table {
                        Some(wanted) if wanted != name => continue,
                        None if found.is_some() => anyhow::bail!(
                            "the SQL creates several tables; it should hold the cached table's alone"
                        ),
                        _ => {}
                    }
                    let mut key = Vec::new();
                    let columns = create
                        .columns
                        .iter()
                        .map(|c| {
                            let mut nullable = true;
                            for option in &c.options {
                                match &option.option {
                                    ColumnOption::NotNull => nullable = false,
                                    ColumnOption::PrimaryKey(_) => {
                                        nullable = false;
                                        key = vec![c.name.value.clone()];
                                    }
                                    _ => {}
                                }
                            }
                            ColumnSchema {
                                name: c.name.value.clone(),
                                mysql_type: c.data_type.to_string().to_ascii_lowercase(),
                                nullable,
                            }
                        })
                        .collect();
                    for constraint in &create.constraints {
                        if let TableConstraint::PrimaryKey(pk) = constraint {
                            key = pk
                                .columns
                                .iter()
                                .map(|c| column_name(&c.column.expr))
                                .collect();
                        }
                    }
                    found = Some(Self {
                        table: name,
                        columns,
                        key,
                    });
                }
                Ok(Statement::AlterTable(alter)) => {
                    for operation in &alter.operations {
                        if let AlterTableOperation::AddConstraint {
                            constraint: TableConstraint::PrimaryKey(pk),
                            ..
                        } = operation
                        {
                            alter_keys.push((
                                last_ident(&alter.name.to_string()),
                                pk.columns
                                    .iter()
                                    .map(|c| column_name(&c.column.expr))
                                    .collect(),
                            ));
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if is_create => create_errors.push(e.to_string()),
                Err(_) => {}
            }
        }
        let mut schema = found.ok_or_else(|| match (table, create_errors.first()) {
            (_, Some(e)) => anyhow!("the CREATE TABLE cannot be parsed: {e}"),
            (Some(t), None) => anyhow!("the SQL holds no CREATE TABLE for `{t}`"),
            (None, None) => anyhow!("the SQL holds no CREATE TABLE"),
        })?;
        for (name, key) in alter_keys {
            if name == schema.table {
                schema.key = key;
            }
        }
        for k in &schema.key {
            anyhow::ensure!(
                schema.columns.iter().any(|c| &c.name == k),
                "the primary key names column `{k}`, which the table does not have"
            );
            if let Some(c) = schema.columns.iter_mut().find(|c| &c.name == k) {
                c.nullable = false;
            }
        }
        Ok(schema)
    }

    /// Reads a `CREATE TABLE` file (`import --schema`).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let sql = std::fs::read_to_string(path)
            .with_context(|| format!("reading the schema file {}", path.display()))?;
        Self::from_sql(&sql, None).with_context(|| format!("in {}", path.display()))
    }

    /// The declared column named `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The typed-view kind of column `name` (text when the schema does not declare it).
    pub fn kind_of(&self, name: &str) -> ValueKind {
        self.column(name)
            .map_or(ValueKind::Text, |c| ValueKind::of_mysql_type(&c.mysql_type))
    }

    /// A hash of the whole schema, mixed into the version's validator: a change of types or key
    /// is a new representation even when the rows are the same.
    pub fn digest(&self) -> u64 {
        stable_hash(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A 64-bit hash that every process and release computes alike (std's hasher promises
/// neither), for validators and log digests: FNV-1a, a few lines that need no crate.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut digest = 0xcbf2_9ce4_8422_2325_u64;
    for &b in bytes {
        digest ^= u64::from(b);
        digest = digest.wrapping_mul(0x100_0000_01b3);
    }
    digest
}

/// The last part of a possibly qualified, possibly quoted name (`` `shop`.`orders` `` → `orders`).
fn last_ident(name: &str) -> String {
    name.rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches(|c| c == '`' || c == '"')
        .to_owned()
}

fn column_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident.value.clone(),
        other => last_ident(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHPMYADMIN_EXPORT: &str = "-- phpMyAdmin SQL Dump\n\
        SET SQL_MODE = \"NO_AUTO_VALUE_ON_ZERO\";\nSTART TRANSACTION;\n\
        /*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n\
        CREATE TABLE `typed` (\n  `id` bigint(20) UNSIGNED NOT NULL,\n  `price` decimal(10,2) DEFAULT NULL COMMENT 'a; b',\n\
        `ratio` double DEFAULT NULL,\n  `flag` tinyint(1) NOT NULL DEFAULT 0,\n  `made` datetime DEFAULT NULL,\n\
        `day` date DEFAULT NULL,\n  `a name` varchar(20) DEFAULT NULL,\n  `note` text DEFAULT NULL\n\
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;\n\
        ALTER TABLE `typed`\n  ADD PRIMARY KEY (`id`);\nCOMMIT;\n";

    #[test]
    fn reads_types_nullability_and_a_key_added_by_alter_table() {
        let schema = TableSchema::from_sql(PHPMYADMIN_EXPORT, None).unwrap();
        assert_eq!(schema.table, "typed");
        assert_eq!(schema.key, ["id"]);
        let kinds: Vec<_> = schema
            .columns
            .iter()
            .map(|c| (c.name.as_str(), schema.kind_of(&c.name), c.nullable))
            .collect();
        assert_eq!(
            kinds,
            [
                ("id", ValueKind::Unsigned, false),
                (
                    "price",
                    ValueKind::Decimal {
                        precision: 10,
                        scale: 2
                    },
                    true
                ),
                ("ratio", ValueKind::Double, true),
                ("flag", ValueKind::Integer, false),
                ("made", ValueKind::DateTime, true),
                ("day", ValueKind::Date, true),
                ("a name", ValueKind::Text, true),
                ("note", ValueKind::Text, true),
            ]
        );
        assert_eq!(schema.columns[0].mysql_type, "bigint(20) unsigned");
    }

    #[test]
    fn reads_an_inline_and_a_composite_key() {
        let inline =
            TableSchema::from_sql("CREATE TABLE t (a INT PRIMARY KEY, b TEXT)", None).unwrap();
        assert_eq!(inline.key, ["a"]);
        let composite = TableSchema::from_sql(
            "CREATE TABLE t (a INT NOT NULL, b INT NOT NULL, PRIMARY KEY (b, a))",
            None,
        )
        .unwrap();
        assert_eq!(composite.key, ["b", "a"]);
        let none = TableSchema::from_sql("CREATE TABLE t (a INT)", None).unwrap();
        assert!(none.key.is_empty());
    }

    #[test]
    fn says_what_is_wrong_with_sql_that_is_no_table() {
        let e = TableSchema::from_sql("SELECT 1", None).unwrap_err();
        assert!(e.to_string().contains("no CREATE TABLE"), "{e}");
        let e = TableSchema::from_sql("CREATE TABLE t (a INT", None).unwrap_err();
        assert!(e.to_string().contains("cannot be parsed"), "{e}");
        let e = TableSchema::from_sql(PHPMYADMIN_EXPORT, Some("orders")).unwrap_err();
        assert!(e.to_string().contains("`orders`"), "{e}");
    }

    #[test]
    fn wide_decimals_and_unknown_types_stay_text() {
        assert_eq!(ValueKind::of_mysql_type("decimal(65,30)"), ValueKind::Text);
        assert_eq!(ValueKind::of_mysql_type("enum('a','b')"), ValueKind::Text);
        assert_eq!(
            ValueKind::of_mysql_type("int(10) unsigned"),
            ValueKind::Integer
        );
        assert_eq!(
            ValueKind::of_mysql_type("DECIMAL"),
            ValueKind::Decimal {
                precision: 10,
                scale: 0
            }
        );
    }
}
