//! Full-text search over metadata text: which keys are searchable and
//! how their text is analyzed ([`TextFields`], from the index settings'
//! `textFields`), the analyzers ([`analyzer`]), BM25 ([`bm25`]) and
//! reciprocal rank fusion ([`fuse`]). Knows nothing of where documents live: the reader
//! gathers them (`reader::text`).
//!
//! A searchable key's value is a string, or a list of strings (its
//! elements are one text, in order); a record whose searchable key holds
//! anything else is refused at write. Keys that are not searchable are
//! never analyzed.

pub mod analyzer;
pub(crate) mod bm25;
pub(crate) mod fuse;
pub(crate) mod postings;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::vocab::{Analyzer, InvalidSetting, TextField};

/// The most full-text searchable keys an index may have.
pub(crate) const MAX_TEXT_FIELDS: usize = 16;
/// The longest key name a text field may have (bytes).
pub(crate) const MAX_TEXT_KEY_BYTES: usize = 63;

/// The searchable keys of an index with their analyzers, in key order
/// (a field's position is its number in text indexes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextFields(Vec<(String, Analyzer)>);

impl TextFields {
    /// Checks the settings' `textFields`; the error names the key and
    /// what is wrong with it.
    pub fn from_settings(
        fields: &BTreeMap<String, TextField>,
    ) -> Result<TextFields, InvalidSetting> {
        if fields.len() > MAX_TEXT_FIELDS {
            return Err(InvalidSetting {
                setting: "textFields",
                value: format!("{} keys", fields.len()),
                expected: format!("at most {MAX_TEXT_FIELDS} full-text searchable keys"),
            });
        }
        let mut out = Vec::with_capacity(fields.len());
        for (key, field) in fields {
            if key.is_empty() || key.len() > MAX_TEXT_KEY_BYTES {
                return Err(InvalidSetting {
                    setting: "textFields",
                    value: format!("{key:?}"),
                    expected: format!("a metadata key of 1 to {MAX_TEXT_KEY_BYTES} bytes"),
                });
            }
            let analyzer = field
                .analyzer
                .parse::<Analyzer>()
                .map_err(|e| InvalidSetting {
                    value: format!("{key}: {}", e.value),
                    ..e
                })?;
            out.push((key.clone(), analyzer));
        }
        Ok(TextFields(out))
    }

    /// The searchable keys with their analyzers, in key order, owned.
    pub(crate) fn to_vec(&self) -> Vec<(String, Analyzer)> {
        self.0.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The searchable keys with their analyzers, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Analyzer)> {
        self.0.iter().map(|(k, a)| (k.as_str(), *a))
    }

    /// Refuses a record whose searchable key holds something that is not
    /// text; the message names the key.
    pub(crate) fn check(&self, metadata: Option<&Map<String, Value>>) -> Result<(), String> {
        let Some(metadata) = metadata else {
            return Ok(());
        };
        for (key, _) in &self.0 {
            if let Some(value) = metadata.get(key) {
                if text_of(value).is_none() {
                    return Err(format!(
                        "metadata key {key:?} is full-text searchable: its value must be a \
                         string or a list of strings, not {}",
                        kind(value)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The most text queries (ranked lists) one search may fuse.
pub(crate) const MAX_QUERY_TEXTS: usize = 10;
/// The longest query text, in characters (as Amazon S3 Vectors).
pub(crate) const MAX_QUERY_TEXT_CHARS: usize = 1024;

/// Checks a search's text queries (`(key, text)`; no key means the
/// index's one searchable key) against the index's searchable keys and
/// returns each with its key and analyzer; the error says what is wrong
/// and, for a key, which keys are searchable.
pub(crate) fn check_queries<'q>(
    fields: &TextFields,
    asked: impl ExactSizeIterator<Item = (Option<&'q str>, &'q str)>,
) -> Result<Vec<(String, Analyzer, &'q str)>, String> {
    let searchable = || {
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k).collect();
        if keys.is_empty() {
            "this index has no full-text searchable keys (settings.textFields)".to_string()
        } else {
            format!("searchable keys: {}", keys.join(", "))
        }
    };
    if asked.len() > MAX_QUERY_TEXTS {
        return Err(format!(
            "at most {MAX_QUERY_TEXTS} text queries per search, got {}",
            asked.len()
        ));
    }
    let mut out: Vec<(String, Analyzer, &str)> = Vec::with_capacity(asked.len());
    for (key, text) in asked {
        let chars = text.chars().count();
        if text.trim().is_empty() || chars > MAX_QUERY_TEXT_CHARS {
            return Err(format!(
                "a query text must hold 1 to {MAX_QUERY_TEXT_CHARS} characters and not only \
                 spaces, got {chars}"
            ));
        }
        let (key, analyzer) = match key {
            Some(k) => match fields.0.iter().find(|(f, _)| f == k) {
                Some((f, a)) => (f.clone(), *a),
                None => {
                    return Err(format!(
                        "metadata key {k:?} is not full-text searchable; {}",
                        searchable()
                    ))
                }
            },
            None => match fields.0.as_slice() {
                [(f, a)] => (f.clone(), *a),
                _ => {
                    return Err(format!(
                        "name the key to search the text in (\"key\"); {}",
                        searchable()
                    ))
                }
            },
        };
        if out.iter().any(|(k, _, _)| *k == key) {
            return Err(format!(
                "metadata key {key:?} is searched twice; one text per key"
            ));
        }
        out.push((key, analyzer, text));
    }
    Ok(out)
}

/// The text of a searchable value: a string, or a list of strings joined
/// by newlines; `None` for anything else.
pub(crate) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            parts.map(|p| p.join("\n"))
        }
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list with non-string elements",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(spec: &[(&str, &str)]) -> Result<TextFields, InvalidSetting> {
        TextFields::from_settings(
            &spec
                .iter()
                .map(|(k, a)| {
                    (
                        k.to_string(),
                        TextField {
                            analyzer: a.to_string(),
                        },
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn settings_name_the_key_and_the_analyzer_that_is_wrong() {
        let err = fields(&[("title", "klingon")]).unwrap_err();
        assert!(err.to_string().contains("title"), "{err}");
        assert!(err.to_string().contains("klingon"), "{err}");
        assert!(err.to_string().contains("standard"), "{err}");
        assert!(fields(&[("", "en")]).is_err());
        let many: Vec<(String, String)> = (0..=MAX_TEXT_FIELDS)
            .map(|i| (format!("k{i}"), "en".into()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, a)| (k.as_str(), a.as_str())).collect();
        assert!(fields(&many).is_err());
        let ok = fields(&[("title", "en"), ("body", "standard")]).unwrap();
        // Key order, whatever the settings' order.
        assert_eq!(
            ok.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["body", "title"]
        );
    }

    #[test]
    fn only_text_values_pass_and_the_error_names_the_key() {
        let f = fields(&[("text", "en")]).unwrap();
        let ok = json!({"text": ["one", "two"], "n": 3});
        assert!(f.check(ok.as_object()).is_ok());
        let bad = json!({"text": 3});
        let err = f.check(bad.as_object()).unwrap_err();
        assert!(
            err.contains("\"text\"") && err.contains("a number"),
            "{err}"
        );
        assert!(f.check(json!({"text": ["a", 1]}).as_object()).is_err());
        assert!(f.check(None).is_ok());
    }

    #[test]
    fn lists_of_strings_are_one_text() {
        let list = text_of(&json!(["one", "two"])).unwrap();
        assert_eq!(list, "one\ntwo");
        assert!(text_of(&json!(3)).is_none());
    }
}
