//! Metadata filters.
//!
//! JSON syntax (MongoDB-style), where `domain` is just a field:
//!
//! ```json
//! {"domain": "medical"}                              equality
//! {"price": {"$lt": 10}}                             $lt $lte $gt $gte (numbers)
//! {"tag": {"$in": ["a", "b"]}}                       $in, $nin
//! {"status": {"$ne": "retired"}}                     $ne (also matches a missing field)
//! {"sku": {"$exists": true}}                         $exists
//! {"package": {"$startsWith": "python3-"}}           $startsWith (a string prefix)
//! {"$and": [{...}, {...}]}   {"$or": [{...}, ...]}   several keys in one object = and
//! {"meta.author": "x"}                               dotted paths reach into objects
//! ```
//!
//! A field holding an array matches `$eq`/`$in` when any item does (and
//! `$ne`/`$nin` when none does): `{"tags": "a"}` matches `["a", "b"]`.
//!
//! Anything else (unknown operators, a non-number for `$lt`, a non-array
//! for `$in`, empty `$and`) is an error that names what is wrong.

use serde_json::{Map, Value};

/// Deepest nesting of `$and`/`$or` accepted.
pub(crate) const MAX_DEPTH: usize = 32;

/// Most terms a filter may hold: conditions and `$and`/`$or` nodes. A
/// filter is evaluated against every candidate row, so its size
/// multiplies a query's work; this keeps one request from occupying the
/// cores.
pub(crate) const MAX_TERMS: usize = 1024;

/// Most `$in`/`$nin` values a filter may hold, all lists together (each
/// list is a hash set, so its length costs memory, not time per row).
pub(crate) const MAX_VALUES: usize = 10_000;

/// The values of an `$in`/`$nin`, hashed for lookup; numbers compare by
/// value (`1 == 1.0`), like [`Filter::Eq`].
#[derive(Clone, Debug)]
pub struct ValueSet {
    values: Vec<Value>,
    keys: std::collections::HashSet<ValueKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ValueKey {
    Num(u64),
    Str(String),
    Other(String),
}

fn value_key(v: &Value) -> ValueKey {
    match v {
        // +0.0 and -0.0 are equal numbers: one key.
        Value::Number(n) => ValueKey::Num(n.as_f64().map_or(0, |x| (x + 0.0).to_bits())),
        Value::String(s) => ValueKey::Str(s.clone()),
        other => ValueKey::Other(other.to_string()),
    }
}

impl ValueSet {
    fn new(values: Vec<Value>) -> Self {
        let keys = values.iter().map(value_key).collect();
        ValueSet { values, keys }
    }

    fn contains(&self, v: &Value) -> bool {
        self.keys.contains(&value_key(v))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl PartialEq for ValueSet {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Eq(String, Value),
    Ne(String, Value),
    Lt(String, f64),
    Lte(String, f64),
    Gt(String, f64),
    Gte(String, f64),
    In(String, ValueSet),
    Nin(String, ValueSet),
    Exists(String, bool),
    /// A string value (or an item of an array) beginning with the prefix.
    StartsWith(String, String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(msg.into()))
}

const OPERATORS: &str = "$eq, $ne, $lt, $lte, $gt, $gte, $in, $nin, $exists, $startsWith";

/// Parses a JSON filter.
pub fn parse_filter(v: &Value) -> Result<Filter, FilterError> {
    let f = parse_at(v, 0)?;
    let (terms, values) = f.size();
    if terms > MAX_TERMS {
        return err(format!(
            "the filter has {terms} terms (conditions and $and/$or nodes); at most \
             {MAX_TERMS} are allowed"
        ));
    }
    if values > MAX_VALUES {
        return err(format!(
            "the filter's $in/$nin lists hold {values} values; at most {MAX_VALUES} are allowed"
        ));
    }
    Ok(f)
}

fn parse_at(v: &Value, depth: usize) -> Result<Filter, FilterError> {
    if depth > MAX_DEPTH {
        return err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let Value::Object(obj) = v else {
        return err(format!("a filter must be a JSON object, found {v}"));
    };
    if obj.is_empty() {
        return err("empty filter object");
    }
    let mut parts = Vec::with_capacity(obj.len());
    for (key, val) in obj {
        parts.push(match key.as_str() {
            "$and" | "$or" => {
                let Value::Array(items) = val else {
                    return err(format!("{key} needs an array of filters"));
                };
                if items.is_empty() {
                    return err(format!("{key} needs at least one filter"));
                }
                let subs = items
                    .iter()
                    .map(|i| parse_at(i, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "$and" {
                    Filter::And(subs)
                } else {
                    Filter::Or(subs)
                }
            }
            k if k.starts_with('$') => {
                return err(format!(
                    "unknown operator `{k}` at the top level; use $and, $or or a field name"
                ))
            }
            field => parse_field(field, val)?,
        });
    }
    Ok(if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Filter::And(parts)
    })
}

fn parse_field(field: &str, val: &Value) -> Result<Filter, FilterError> {
    if field.is_empty() {
        return err("empty field name");
    }
    let ops = match val {
        Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => ops,
        Value::Object(_) => {
            return err(format!(
                "field `{field}`: an object value needs operators such as {{\"$eq\": ...}}"
            ))
        }
        other => return Ok(Filter::Eq(field.into(), other.clone())),
    };
    let num = |op: &str, v: &Value| {
        v.as_f64()
            .ok_or_else(|| FilterError(format!("field `{field}`: {op} needs a number, found {v}")))
    };
    let list = |op: &str, v: &Value| match v {
        Value::Array(a) => Ok(a.clone()),
        _ => err(format!("field `{field}`: {op} needs an array, found {v}")),
    };
    let mut parts = Vec::with_capacity(ops.len());
    for (op, v) in ops {
        let f = field.to_string();
        parts.push(match op.as_str() {
            "$eq" => Filter::Eq(f, v.clone()),
            "$ne" => Filter::Ne(f, v.clone()),
            "$lt" => Filter::Lt(f, num(op, v)?),
            "$lte" => Filter::Lte(f, num(op, v)?),
            "$gt" => Filter::Gt(f, num(op, v)?),
            "$gte" => Filter::Gte(f, num(op, v)?),
            "$in" => Filter::In(f, ValueSet::new(list(op, v)?)),
            "$nin" => Filter::Nin(f, ValueSet::new(list(op, v)?)),
            "$startsWith" => match v {
                Value::String(p) => Filter::StartsWith(f, p.clone()),
                _ => {
                    return err(format!(
                        "field `{field}`: $startsWith needs a string, found {v}"
                    ))
                }
            },
            "$exists" => match v {
                Value::Bool(b) => Filter::Exists(f, *b),
                _ => {
                    return err(format!(
                        "field `{field}`: $exists needs true or false, found {v}"
                    ))
                }
            },
            other => {
                return err(format!(
                    "field `{field}`: unknown operator `{other}`; allowed: {OPERATORS}"
                ))
            }
        });
    }
    Ok(if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Filter::And(parts)
    })
}

/// Looks up a dotted path.
fn lookup<'a>(meta: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = meta.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = meta.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Whether `value` passes `test`; an array value passes when the whole
/// array or any one of its items does (`{"tags": "a"}` matches
/// `"tags": ["a", "b"]`, as in S3 Vectors and MongoDB).
fn any_item(value: &Value, test: impl Fn(&Value) -> bool) -> bool {
    test(value) || matches!(value, Value::Array(items) if items.iter().any(&test))
}

/// JSON equality with numbers compared by value (1 == 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Filter {
    /// Terms (conditions and `$and`/`$or` nodes) and `$in`/`$nin` values.
    pub fn size(&self) -> (usize, usize) {
        match self {
            Filter::And(fs) | Filter::Or(fs) => fs.iter().fold((1, 0), |(t, v), f| {
                let (ft, fv) = f.size();
                (t + ft, v + fv)
            }),
            Filter::In(_, vs) | Filter::Nin(_, vs) => (1, vs.len()),
            _ => (1, 0),
        }
    }

    /// Whether a record with this metadata passes.
    pub fn matches(&self, meta: &Map<String, Value>) -> bool {
        let num = |f: &str| lookup(meta, f).and_then(Value::as_f64);
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(meta)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(meta)),
            Filter::Eq(f, v) => lookup(meta, f).is_some_and(|x| any_item(x, |y| json_eq(y, v))),
            Filter::Ne(f, v) => !lookup(meta, f).is_some_and(|x| any_item(x, |y| json_eq(y, v))),
            Filter::Lt(f, n) => num(f).is_some_and(|x| x < *n),
            Filter::Lte(f, n) => num(f).is_some_and(|x| x <= *n),
            Filter::Gt(f, n) => num(f).is_some_and(|x| x > *n),
            Filter::Gte(f, n) => num(f).is_some_and(|x| x >= *n),
            Filter::In(f, vs) => lookup(meta, f).is_some_and(|x| any_item(x, |y| vs.contains(y))),
            Filter::Nin(f, vs) => !lookup(meta, f).is_some_and(|x| any_item(x, |y| vs.contains(y))),
            Filter::Exists(f, want) => lookup(meta, f).is_some() == *want,
            Filter::StartsWith(f, p) => lookup(meta, f)
                .is_some_and(|x| any_item(x, |y| y.as_str().is_some_and(|s| s.starts_with(p)))),
        }
    }
}

/// Compiles the readable filter syntax used on the command line into the
/// JSON filter:
///
/// ```text
/// domain=medical and price<10
/// (domain = "legal" or tag in [a, b]) and sku exists and status != retired
/// ```
///
/// Comparisons `=`, `!=`, `<`, `<=`, `>`, `>=`, `in [..]`, `exists`,
/// `not exists`; `and` binds tighter than `or`; parentheses group. Values
/// are numbers, `true`/`false`/`null`, quoted strings, or bare words
/// (strings).
pub fn parse_filter_expr(src: &str) -> Result<Value, FilterError> {
    let tokens = tokenize(src)?;
    let mut p = ExprParser {
        t: &tokens,
        at: 0,
        depth: 0,
    };
    let v = p.or()?;
    if let Some(tok) = p.t.get(p.at) {
        return err(format!(
            "unexpected `{}` at position {}",
            tok.text,
            tok.pos + 1
        ));
    }
    parse_filter(&v)?;
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Tk {
    Word,
    Str,
    Op,
    Punct,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tk,
    text: String,
    pos: usize,
}

fn tokenize(src: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if matches!(c, '(' | ')' | '[' | ']' | ',') {
            out.push(Token {
                kind: Tk::Punct,
                text: c.to_string(),
                pos,
            });
            i += 1;
        } else if matches!(c, '=' | '!' | '<' | '>') {
            let two: String = chars[i..chars.len().min(i + 2)]
                .iter()
                .map(|x| x.1)
                .collect();
            let op = if matches!(two.as_str(), "==" | "!=" | "<=" | ">=") {
                two
            } else {
                c.to_string()
            };
            if op == "!" {
                return err(format!(
                    "`!` at position {} must be followed by `=`",
                    pos + 1
                ));
            }
            i += op.len();
            out.push(Token {
                kind: Tk::Op,
                text: op,
                pos,
            });
        } else if c == '"' || c == '\'' {
            let mut j = i + 1;
            let mut text = String::new();
            while j < chars.len() && chars[j].1 != c {
                if chars[j].1 == '\\' && j + 1 < chars.len() {
                    j += 1;
                }
                text.push(chars[j].1);
                j += 1;
            }
            if j >= chars.len() {
                return err(format!(
                    "unterminated string starting at position {}",
                    pos + 1
                ));
            }
            out.push(Token {
                kind: Tk::Str,
                text,
                pos,
            });
            i = j + 1;
        } else {
            let mut j = i;
            let mut text = String::new();
            while j < chars.len() {
                let ch = chars[j].1;
                if ch.is_whitespace() || "()[],=!<>\"'".contains(ch) {
                    break;
                }
                text.push(ch);
                j += 1;
            }
            out.push(Token {
                kind: Tk::Word,
                text,
                pos,
            });
            i = j;
        }
    }
    Ok(out)
}

struct ExprParser<'a> {
    t: &'a [Token],
    at: usize,
    depth: usize,
}

impl ExprParser<'_> {
    fn peek_word(&self, w: &str) -> bool {
        self.t
            .get(self.at)
            .is_some_and(|t| t.kind == Tk::Word && t.text.eq_ignore_ascii_case(w))
    }

    fn peek_punct(&self, p: &str) -> bool {
        self.t
            .get(self.at)
            .is_some_and(|t| t.kind == Tk::Punct && t.text == p)
    }

    fn where_(&self) -> String {
        match self.t.get(self.at) {
            Some(t) => format!("at `{}` (position {})", t.text, t.pos + 1),
            None => "at the end".into(),
        }
    }

    fn or(&mut self) -> Result<Value, FilterError> {
        let mut parts = vec![self.and()?];
        while self.peek_word("or") {
            self.at += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            serde_json::json!({"$or": parts})
        })
    }

    fn and(&mut self) -> Result<Value, FilterError> {
        let mut parts = vec![self.term()?];
        while self.peek_word("and") {
            self.at += 1;
            parts.push(self.term()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            serde_json::json!({"$and": parts})
        })
    }

    fn term(&mut self) -> Result<Value, FilterError> {
        if self.peek_punct("(") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return err(format!("nested deeper than {MAX_DEPTH} levels"));
            }
            self.at += 1;
            let v = self.or()?;
            if !self.peek_punct(")") {
                return err(format!("expected `)` {}", self.where_()));
            }
            self.at += 1;
            self.depth -= 1;
            return Ok(v);
        }
        let field = match self.t.get(self.at) {
            Some(t)
                if t.kind == Tk::Word
                    && !["and", "or"].contains(&t.text.to_lowercase().as_str()) =>
            {
                t.text.clone()
            }
            _ => return err(format!("expected a field name {}", self.where_())),
        };
        self.at += 1;
        if self.peek_word("exists") {
            self.at += 1;
            return Ok(serde_json::json!({ field: {"$exists": true} }));
        }
        if self.peek_word("not") {
            self.at += 1;
            if !self.peek_word("exists") {
                return err(format!("expected `exists` after `not` {}", self.where_()));
            }
            self.at += 1;
            return Ok(serde_json::json!({ field: {"$exists": false} }));
        }
        if self.peek_word("in") {
            self.at += 1;
            if !self.peek_punct("[") {
                return err(format!("expected `[` after `in` {}", self.where_()));
            }
            self.at += 1;
            let mut vals = Vec::new();
            while !self.peek_punct("]") {
                vals.push(self.value()?);
                if self.peek_punct(",") {
                    self.at += 1;
                } else if !self.peek_punct("]") {
                    return err(format!("expected `,` or `]` {}", self.where_()));
                }
            }
            self.at += 1;
            return Ok(serde_json::json!({ field: {"$in": vals} }));
        }
        let op = match self.t.get(self.at) {
            Some(t) if t.kind == Tk::Op => t.text.clone(),
            _ => {
                return err(format!(
                    "expected an operator (=, !=, <, <=, >, >=, in, exists) after `{field}` {}",
                    self.where_()
                ))
            }
        };
        self.at += 1;
        let v = self.value()?;
        let numeric = |v: &Value| {
            if v.is_number() {
                Ok(())
            } else {
                err(format!("`{field} {op}` needs a number, found {v}"))
            }
        };
        Ok(match op.as_str() {
            "=" | "==" => serde_json::json!({ field: v }),
            "!=" => serde_json::json!({ field: {"$ne": v} }),
            "<" => {
                numeric(&v)?;
                serde_json::json!({ field: {"$lt": v} })
            }
            "<=" => {
                numeric(&v)?;
                serde_json::json!({ field: {"$lte": v} })
            }
            ">" => {
                numeric(&v)?;
                serde_json::json!({ field: {"$gt": v} })
            }
            _ => {
                numeric(&v)?;
                serde_json::json!({ field: {"$gte": v} })
            }
        })
    }

    fn value(&mut self) -> Result<Value, FilterError> {
        let Some(t) = self.t.get(self.at) else {
            return err("expected a value at the end");
        };
        let v = match t.kind {
            Tk::Str => Value::String(t.text.clone()),
            Tk::Word => match t.text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                w => match w.parse::<f64>() {
                    Ok(n) if n.is_finite() => serde_json::Number::from_f64(n)
                        .map(|n| {
                            if w.contains(['.', 'e', 'E']) {
                                Value::Number(n)
                            } else {
                                w.parse::<i64>()
                                    .map(Value::from)
                                    .unwrap_or(Value::Number(n))
                            }
                        })
                        .unwrap_or_else(|| Value::String(w.into())),
                    _ => Value::String(w.into()),
                },
            },
            _ => return err(format!("expected a value {}", self.where_())),
        };
        self.at += 1;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_operator_matches_as_documented() {
        let doc = m(json!({"domain": "medical", "price": 5, "tags": "a", "meta": {"author": "x"}}));
        let yes = [
            json!({"domain": "medical"}),
            json!({"price": 5.0}),
            json!({"price": {"$lt": 10}}),
            json!({"price": {"$lte": 5}}),
            json!({"price": {"$gt": 4, "$lt": 6}}),
            json!({"price": {"$gte": 5}}),
            json!({"tags": {"$in": ["b", "a"]}}),
            json!({"tags": {"$nin": ["b"]}}),
            json!({"domain": {"$ne": "legal"}}),
            json!({"missing": {"$ne": 1}}),
            json!({"price": {"$exists": true}}),
            json!({"missing": {"$exists": false}}),
            json!({"meta.author": "x"}),
            json!({"$or": [{"domain": "legal"}, {"price": {"$lt": 6}}]}),
            json!({"$and": [{"domain": "medical"}, {"price": 5}]}),
            json!({"domain": "medical", "price": {"$gt": 1}}),
            json!({"domain": {"$startsWith": "med"}}),
            json!({"domain": {"$startsWith": ""}}),
            json!({"tags": {"$startsWith": "a"}}),
        ];
        for f in yes {
            assert!(parse_filter(&f).unwrap().matches(&doc), "{f} should match");
        }
        let no = [
            json!({"domain": "legal"}),
            json!({"price": {"$lt": 5}}),
            json!({"domain": {"$lt": 5}}),
            json!({"missing": 1}),
            json!({"tags": {"$in": []}}),
            json!({"domain": {"$ne": "medical"}}),
            json!({"price": {"$exists": false}}),
            json!({"$and": [{"domain": "medical"}, {"price": 6}]}),
            json!({"domain": {"$startsWith": "Med"}}),
            json!({"price": {"$startsWith": "5"}}),
            json!({"missing": {"$startsWith": ""}}),
        ];
        for f in no {
            assert!(
                !parse_filter(&f).unwrap().matches(&doc),
                "{f} should not match"
            );
        }
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        let cases = [
            (json!([1]), "must be a JSON object"),
            (json!({}), "empty filter"),
            (
                json!({"price": {"$regex": "x"}}),
                "unknown operator `$regex`",
            ),
            (json!({"price": {"$lt": "ten"}}), "$lt needs a number"),
            (json!({"tags": {"$in": "a"}}), "$in needs an array"),
            (json!({"$and": []}), "$and needs at least one filter"),
            (json!({"$or": {"a": 1}}), "$or needs an array"),
            (json!({"$not": {"a": 1}}), "unknown operator `$not`"),
            (json!({"a": {"b": 1}}), "needs operators"),
            (json!({"a": {"$exists": 1}}), "$exists needs true or false"),
            (
                json!({"a": {"$startsWith": 1}}),
                "$startsWith needs a string",
            ),
        ];
        for (f, want) in cases {
            let e = parse_filter(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{f}: got {e}, want {want}");
        }
    }

    #[test]
    fn oversized_filters_are_refused_with_their_size() {
        let values: Vec<Value> = (0..=MAX_VALUES).map(|i| json!(i)).collect();
        let fits = json!({"tag": {"$in": values[..MAX_VALUES]}});
        assert_eq!(parse_filter(&fits).unwrap().size(), (1, MAX_VALUES));
        let e = parse_filter(&json!({"tag": {"$in": values}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{} values", MAX_VALUES + 1)), "{e}");
        // Values of several lists add up.
        let half: Vec<Value> = (0..MAX_VALUES / 2 + 1).map(|i| json!(i)).collect();
        let e = parse_filter(&json!({"a": {"$in": half}, "b": {"$nin": half}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 10000"), "{e}");
        let ors: Vec<Value> = (0..MAX_TERMS).map(|i| json!({"a": i})).collect();
        let e = parse_filter(&json!({"$or": ors})).unwrap_err().to_string();
        assert!(e.contains("1025 terms"), "{e}");
        let ors: Vec<Value> = (0..MAX_TERMS - 1).map(|i| json!({"a": i})).collect();
        assert_eq!(
            parse_filter(&json!({"$or": ors})).unwrap().size(),
            (MAX_TERMS, 0)
        );
    }

    #[test]
    fn in_and_nin_compare_numbers_by_value_and_types_apart() {
        let f = parse_filter(&json!({"n": {"$in": [1, "2", null, -0.0]}})).unwrap();
        assert!(f.matches(&m(json!({"n": 1.0}))));
        assert!(f.matches(&m(json!({"n": "2"}))));
        assert!(f.matches(&m(json!({"n": null}))));
        assert!(f.matches(&m(json!({"n": 0}))));
        assert!(
            !f.matches(&m(json!({"n": 2}))),
            "the number 2 is not the string \"2\""
        );
        assert!(!f.matches(&m(json!({"n": "1"}))));
        let f = parse_filter(&json!({"n": {"$nin": [1]}})).unwrap();
        assert!(!f.matches(&m(json!({"n": 1.0}))));
        assert!(f.matches(&m(json!({"n": 3}))));
        assert!(f.matches(&m(json!({}))));
    }

    #[test]
    fn array_values_match_by_any_item() {
        let doc = m(json!({"tags": ["documentary", "romance"], "years": [1999, 2004]}));
        let yes = [
            json!({"tags": "romance"}),
            json!({"tags": {"$eq": "documentary"}}),
            json!({"tags": {"$in": ["x", "romance"]}}),
            json!({"tags": {"$ne": "horror"}}),
            json!({"tags": {"$nin": ["horror", "x"]}}),
            json!({"years": 2004.0}),
            json!({"tags": ["documentary", "romance"]}),
        ];
        for f in yes {
            assert!(parse_filter(&f).unwrap().matches(&doc), "{f} should match");
        }
        let no = [
            json!({"tags": "horror"}),
            json!({"tags": {"$ne": "romance"}}),
            json!({"tags": {"$nin": ["romance"]}}),
            json!({"tags": {"$in": ["horror"]}}),
            json!({"years": 2000}),
        ];
        for f in no {
            assert!(
                !parse_filter(&f).unwrap().matches(&doc),
                "{f} should not match"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut f = json!({"a": 1});
        for _ in 0..100 {
            f = json!({"$and": [f]});
        }
        assert!(parse_filter(&f)
            .unwrap_err()
            .to_string()
            .contains("nested deeper"));
    }

    #[test]
    fn readable_syntax_compiles_to_json_filters() {
        let cases = [
            ("domain=medical", json!({"domain": "medical"})),
            ("domain = \"legal docs\"", json!({"domain": "legal docs"})),
            ("price<10", json!({"price": {"$lt": 10}})),
            ("price >= 2.5", json!({"price": {"$gte": 2.5}})),
            (
                "a=1 and b!=x",
                json!({"$and": [{"a": 1}, {"b": {"$ne": "x"}}]}),
            ),
            (
                "a=1 or b=2 and c=3",
                json!({"$or": [{"a": 1}, {"$and": [{"b": 2}, {"c": 3}]}]}),
            ),
            (
                "(a=1 or b=2) and c=3",
                json!({"$and": [{"$or": [{"a": 1}, {"b": 2}]}, {"c": 3}]}),
            ),
            (
                "tag in [a, 'b c', 3]",
                json!({"tag": {"$in": ["a", "b c", 3]}}),
            ),
            (
                "sku exists and x not exists",
                json!({"$and": [{"sku": {"$exists": true}}, {"x": {"$exists": false}}]}),
            ),
            ("flag = true", json!({"flag": true})),
        ];
        for (src, want) in cases {
            assert_eq!(parse_filter_expr(src).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn readable_syntax_errors_point_at_the_problem() {
        let cases = [
            ("domain", "expected an operator"),
            ("domain=", "expected a value at the end"),
            ("price < cheap", "needs a number"),
            ("(a=1", "expected `)`"),
            ("a=1 b=2", "unexpected `b` at position 5"),
            ("a = 'open", "unterminated string"),
            ("tag in a", "expected `[`"),
            ("and a=1", "expected a field name"),
            ("a ! 1", "must be followed by `=`"),
        ];
        for (src, want) in cases {
            let e = parse_filter_expr(src).unwrap_err().to_string();
            assert!(e.contains(want), "{src}: got {e}, want {want}");
        }
    }

    #[test]
    fn ten_thousand_element_in_works() {
        let vals: Vec<Value> = (0..10_000).map(|i| json!(i)).collect();
        let f = parse_filter(&json!({"n": {"$in": vals}})).unwrap();
        assert!(f.matches(&m(json!({"n": 9999}))));
        assert!(!f.matches(&m(json!({"n": 10000}))));
    }
}
