//! SQL as phpMyAdmin users write it, made safe and understood by the engine: parsed with the
//! MySQL dialect (backtick identifiers, `LIMIT offset, n`), refused unless it is one read-only
//! query, and with MySQL's functions that the engine names or behaves otherwise rewritten into
//! the engine's own (`DATE()`, `YEAR()`…, `DATE_FORMAT` with MySQL's `%` codes, `DATE_SUB`,
//! `CONCAT`'s NULL, `LIKE`'s case-insensitive match under MySQL's default collations).
//!
//! The rewriting works on the parsed statement (the parser's own visitor), never on the text.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, CastKind, DataType as SqlType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, Ident, ObjectName, ObjectNamePart, Statement, Value,
};
use datafusion::sql::sqlparser::dialect::MySqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Why SQL was refused or could not be understood; the message is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Parses `sql`, refuses anything but one read-only query, and rewrites MySQL's functions.
pub fn prepare(sql: &str) -> Result<Statement, Refused> {
    if sql.trim().is_empty() {
        return Err(Refused("no SQL given: send a SELECT in `sql`".into()));
    }
    let dialect = MySqlDialect {};
    let cannot_parse =
        |e: &dyn std::fmt::Display| Refused(format!("the SQL cannot be parsed: {e}"));
    let mut tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| cannot_parse(&e))?;
    // MySQL's dialect reads `$1` as a name; here it is a bound parameter.
    for token in &mut tokens {
        if let Token::Word(word) = &token.token {
            let is_parameter = word.quote_style.is_none()
                && word.value.len() > 1
                && word.value.starts_with('$')
                && word.value[1..].bytes().all(|b| b.is_ascii_digit());
            if is_parameter {
                token.token = Token::Placeholder(word.value.clone());
            }
        }
    }
    let mut statements = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| cannot_parse(&e))?;
    if statements.len() != 1 {
        return Err(Refused(format!(
            "one statement at a time: the SQL holds {}",
            statements.len()
        )));
    }
    let mut statement = statements.remove(0);
    if !matches!(statement, Statement::Query(_)) {
        return Err(Refused(refusal(&statement)));
    }
    let mut problem = None;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(&mut statement, |expr| {
        if let Err(e) = rewrite(expr) {
            problem = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match problem {
        Some(e) => Err(e),
        None => Ok(statement),
    }
}

/// Why a statement that is not a query is refused.
fn refusal(statement: &Statement) -> String {
    let what = match statement {
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_) => "it would change rows",
        Statement::CreateTable(_)
        | Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::AlterTable(_)
        | Statement::Drop { .. }
        | Statement::Truncate(_) => "it would change the schema",
        Statement::Copy { .. } | Statement::LoadData { .. } => "it would read or write files",
        Statement::Set(_) => "it would change settings",
        _ => "it is not a query",
    };
    let first_word = statement
        .to_string()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    format!("only one read-only SELECT is allowed; {first_word} is refused: {what}")
}

/// Rewrites one expression in place (the visitor has already rewritten its children).
fn rewrite(expr: &mut Expr) -> Result<(), Refused> {
    match expr {
        Expr::Like {
            negated,
            any,
            expr: e,
            pattern,
            escape_char,
        } => {
            // MySQL's default collations compare text without case.
            *expr = Expr::ILike {
                negated: *negated,
                any: *any,
                expr: e.clone(),
                pattern: pattern.clone(),
                escape_char: escape_char.clone(),
            };
        }
        Expr::Function(function) => {
            if let Some(new) = rewrite_function(function)? {
                *expr = new;
            }
        }
        _ => {}
    }
    Ok(())
}

fn rewrite_function(function: &Function) -> Result<Option<Expr>, Refused> {
    let [ObjectNamePart::Identifier(name)] = function.name.0.as_slice() else {
        return Ok(None);
    };
    if function.over.is_some() {
        return Ok(None);
    }
    let name = name.value.to_ascii_lowercase();
    let args = || plain_args(function, &name);
    let new = match name.as_str() {
        "date" => {
            let [x] = args()?.try_into().map_err(|_| arity("DATE", 1))?;
            cast(x, SqlType::Date)
        }
        "year" | "month" | "day" | "dayofmonth" | "hour" | "minute" | "second" | "quarter" => {
            let [x] = args()?.try_into().map_err(|_| arity(&name, 1))?;
            let part = if name == "dayofmonth" { "day" } else { &name };
            call("date_part", vec![text(part), x])
        }
        "date_format" => {
            let [x, format] = args()?.try_into().map_err(|_| arity("DATE_FORMAT", 2))?;
            let Expr::Value(v) = &format else {
                return Err(Refused(
                    "DATE_FORMAT's format must be a quoted literal such as '%Y-%m-%d'".into(),
                ));
            };
            let (Value::SingleQuotedString(f) | Value::DoubleQuotedString(f)) = &v.value else {
                return Err(Refused(
                    "DATE_FORMAT's format must be a quoted literal such as '%Y-%m-%d'".into(),
                ));
            };
            call("to_char", vec![x, text(&chrono_format(f)?)])
        }
        "date_sub" | "date_add" | "subdate" | "adddate" => {
            let [x, interval] = args()?.try_into().map_err(|_| arity(&name, 2))?;
            let x = date_literal(x);
            let interval = match interval {
                i @ Expr::Interval(_) => i,
                // `DATE_SUB(x, 3)` means days.
                days => interval_days(days),
            };
            let op = if name.contains("sub") {
                BinaryOperator::Minus
            } else {
                BinaryOperator::Plus
            };
            Expr::Nested(Box::new(Expr::BinaryOp {
                left: Box::new(x),
                op,
                right: Box::new(interval),
            }))
        }
        "curdate" => call("current_date", vec![]),
        "concat" => {
            // MySQL's CONCAT is NULL when any part is; the engine's `||` is too.
            let parts = args()?;
            let mut parts = parts.into_iter().map(|p| cast(p, SqlType::Text));
            let Some(first) = parts.next() else {
                return Err(arity("CONCAT", 1));
            };
            Expr::Nested(Box::new(parts.fold(first, |left, right| Expr::BinaryOp {
                left: Box::new(left),
                op: BinaryOperator::StringConcat,
                right: Box::new(right),
            })))
        }
        "if" => {
            let [condition, then, otherwise] = args()?.try_into().map_err(|_| arity("IF", 3))?;
            Expr::Case {
                case_token: AttachedToken::empty(),
                end_token: AttachedToken::empty(),
                operand: None,
                conditions: vec![datafusion::sql::sqlparser::ast::CaseWhen {
                    condition,
                    result: then,
                }],
                else_result: Some(Box::new(otherwise)),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(new))
}

/// The arguments of a plain call `f(a, b)`.
fn plain_args(function: &Function, name: &str) -> Result<Vec<Expr>, Refused> {
    match &function.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::List(list) if list.duplicate_treatment.is_none() => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
                other => Err(Refused(format!(
                    "{}: unexpected argument {other}",
                    name.to_ascii_uppercase()
                ))),
            })
            .collect(),
        _ => Err(Refused(format!(
            "{}: unexpected arguments",
            name.to_ascii_uppercase()
        ))),
    }
}

fn arity(name: &str, n: usize) -> Refused {
    Refused(format!(
        "{} takes {n} argument{}",
        name.to_ascii_uppercase(),
        if n == 1 { "" } else { "s" }
    ))
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(datafusion::sql::sqlparser::ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

fn cast(x: Expr, data_type: SqlType) -> Expr {
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(x),
        data_type,
        array: false,
        format: None,
    }
}

fn text(s: &str) -> Expr {
    Expr::Value(Value::SingleQuotedString(s.to_owned()).into())
}

/// A quoted date or time used as one (`DATE_SUB('2025-06-01', …)`), typed as MySQL does: a
/// date alone is a DATE, with a time a DATETIME.
fn date_literal(x: Expr) -> Expr {
    let is_text = |v: &Value| {
        matches!(
            v,
            Value::SingleQuotedString(_) | Value::DoubleQuotedString(_)
        )
    };
    match &x {
        Expr::Value(v) if is_text(&v.value) => {
            let short = v
                .value
                .to_string()
                .trim_matches(|c| c == '\'' || c == '"')
                .len()
                <= 10;
            let to = if short {
                SqlType::Date
            } else {
                SqlType::Timestamp(None, datafusion::sql::sqlparser::ast::TimezoneInfo::None)
            };
            cast(x, to)
        }
        _ => x,
    }
}

/// `n DAY` for a count of days given without `INTERVAL`.
fn interval_days(days: Expr) -> Expr {
    Expr::Interval(datafusion::sql::sqlparser::ast::Interval {
        value: Box::new(days),
        leading_field: Some(datafusion::sql::sqlparser::ast::DateTimeField::Day),
        leading_precision: None,
        last_field: None,
        fractional_seconds_precision: None,
    })
}

/// MySQL's `DATE_FORMAT` codes as the engine's (chrono's) `strftime` codes.
pub fn chrono_format(mysql: &str) -> Result<String, Refused> {
    let mut out = String::with_capacity(mysql.len() + 4);
    let mut chars = mysql.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push_str("%%");
            break;
        };
        let chrono = match code {
            'Y' => "%Y",
            'y' => "%y",
            'm' => "%m",
            'c' => "%-m",
            'd' => "%d",
            'e' => "%-d",
            'H' => "%H",
            'k' => "%-H",
            'h' | 'I' => "%I",
            'l' => "%-I",
            'i' => "%M",
            's' | 'S' => "%S",
            'f' => "%6f",
            'p' => "%p",
            'M' => "%B",
            'b' => "%b",
            'W' => "%A",
            'a' => "%a",
            'j' => "%j",
            'T' => "%H:%M:%S",
            'r' => "%I:%M:%S %p",
            'w' => "%w",
            '%' => "%%",
            other => {
                return Err(Refused(format!(
                    "DATE_FORMAT: the code %{other} is not supported"
                )))
            }
        };
        out.push_str(chrono);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql_of(sql: &str) -> String {
        prepare(sql).unwrap().to_string()
    }

    #[test]
    fn refuses_everything_but_one_query_and_says_why() {
        for (sql, why) in [
            ("DELETE FROM orders", "change rows"),
            ("UPDATE orders SET a = 1", "change rows"),
            ("INSERT INTO orders VALUES (1)", "change rows"),
            ("DROP TABLE orders", "change the schema"),
            ("CREATE TABLE x (a INT)", "change the schema"),
            ("SET @a = 1", "change settings"),
            ("SELECT 1; SELECT 2", "one statement at a time"),
            ("SELEC 1", "cannot be parsed"),
            ("  ", "no SQL given"),
        ] {
            let e = prepare(sql).unwrap_err();
            assert!(e.0.contains(why), "{sql}: {e}");
        }
    }

    #[test]
    fn rewrites_mysql_functions_into_the_engines() {
        assert_eq!(
            sql_of("SELECT DATE(`created at`), YEAR(d) FROM t"),
            "SELECT CAST(`created at` AS DATE), date_part('year', d) FROM t"
        );
        assert_eq!(
            sql_of("SELECT DATE_FORMAT(d, '%Y-%m') FROM t WHERE n LIKE 'a%'"),
            "SELECT to_char(d, '%Y-%m') FROM t WHERE n ILIKE 'a%'"
        );
        assert_eq!(
            sql_of("SELECT * FROM t WHERE d > DATE_SUB(NOW(), INTERVAL 30 DAY)"),
            "SELECT * FROM t WHERE d > (NOW() - INTERVAL 30 DAY)"
        );
        assert_eq!(
            sql_of("SELECT CONCAT(a, 1) FROM t"),
            "SELECT (CAST(a AS TEXT) || CAST(1 AS TEXT)) FROM t"
        );
        assert_eq!(
            sql_of("SELECT * FROM t LIMIT 10, 5"),
            "SELECT * FROM t LIMIT 10, 5"
        );
        assert_eq!(
            sql_of("SELECT * FROM t WHERE a = $1 AND `$2` = $2"),
            "SELECT * FROM t WHERE a = $1 AND `$2` = $2"
        );
    }

    #[test]
    fn translates_date_format_codes() {
        assert_eq!(
            chrono_format("%Y-%m-%d %H:%i:%s").unwrap(),
            "%Y-%m-%d %H:%M:%S"
        );
        assert!(chrono_format("%U").is_err());
    }
}
