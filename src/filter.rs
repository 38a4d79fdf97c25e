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
//! {"$and": [{...}, {...}]}   {"$or": [{...}, ...]}   several keys in one object = and
//! {"meta.author": "x"}                               dotted paths reach into objects
//! ```
//!
//! Anything else (unknown operators, a non-number for `$lt`, a non-array
//! for `$in`, empty `$and`) is an error that names what is wrong.

use serde_json::{Map, Value};

/// Deepest nesting of `$and`/`$or` accepted.
pub const MAX_DEPTH: usize = 32;

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
    In(String, Vec<Value>),
    Nin(String, Vec<Value>),
    Exists(String, bool),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(msg.into()))
}

const OPERATORS: &str = "$eq, $ne, $lt, $lte, $gt, $gte, $in, $nin, $exists";

/// Parses a JSON filter.
pub fn parse_filter(v: &Value) -> Result<Filter, FilterError> {
    parse_at(v, 0)
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
            "$in" => Filter::In(f, list(op, v)?),
            "$nin" => Filter::Nin(f, list(op, v)?),
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

/// JSON equality with numbers compared by value (1 == 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Filter {
    /// Whether a record with this metadata passes.
    pub fn matches(&self, meta: &Map<String, Value>) -> bool {
        let num = |f: &str| lookup(meta, f).and_then(Value::as_f64);
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(meta)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(meta)),
            Filter::Eq(f, v) => lookup(meta, f).is_some_and(|x| json_eq(x, v)),
            Filter::Ne(f, v) => !lookup(meta, f).is_some_and(|x| json_eq(x, v)),
            Filter::Lt(f, n) => num(f).is_some_and(|x| x < *n),
            Filter::Lte(f, n) => num(f).is_some_and(|x| x <= *n),
            Filter::Gt(f, n) => num(f).is_some_and(|x| x > *n),
            Filter::Gte(f, n) => num(f).is_some_and(|x| x >= *n),
            Filter::In(f, vs) => lookup(meta, f).is_some_and(|x| vs.iter().any(|v| json_eq(x, v))),
            Filter::Nin(f, vs) => {
                !lookup(meta, f).is_some_and(|x| vs.iter().any(|v| json_eq(x, v)))
            }
            Filter::Exists(f, want) => lookup(meta, f).is_some() == *want,
        }
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
        ];
        for (f, want) in cases {
            let e = parse_filter(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{f}: got {e}, want {want}");
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
    fn ten_thousand_element_in_works() {
        let vals: Vec<Value> = (0..10_000).map(|i| json!(i)).collect();
        let f = parse_filter(&json!({"n": {"$in": vals}})).unwrap();
        assert!(f.matches(&m(json!({"n": 9999}))));
        assert!(!f.matches(&m(json!({"n": 10000}))));
    }
}
