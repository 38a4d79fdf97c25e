//! Text to terms: the analyzers a full-text field may name.
//!
//! Every analyzer is a tantivy tokenizer pipeline (tantivy's tokenizers,
//! Snowball stemmers and stop-word lists, the ones its own indexes use):
//! split on anything that is not a letter or digit, drop tokens longer
//! than [`MAX_TERM_BYTES`], lowercase, then per language drop its stop
//! words and stem. Chinese, Japanese and Korean have no spaces between
//! words; their analyzers turn every run of CJK characters into
//! overlapping character bigrams (what Lucene's `CJKAnalyzer` and
//! Elasticsearch's `cjk` analyzer do), so a query matches any document
//! sharing two-character sequences with it, without a dictionary.
//!
//! The same analyzer runs on documents (at write, index and scoring time)
//! and on queries, so the terms always agree.

use std::cell::RefCell;
use std::collections::HashMap;

use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
    TokenStream,
};

use crate::vocab::Analyzer;

/// Tokens longer than this (in bytes) are dropped: they are hashes,
/// encoded blobs or URLs, not words a query names.
pub(crate) const MAX_TERM_BYTES: usize = 64;

/// The terms of `text` under `analyzer`, in order, repeats kept.
pub fn terms(analyzer: Analyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_term(analyzer, text, |t| out.push(t.to_string()));
    out
}

thread_local! {
    /// Each thread's pipelines, built once per analyzer: building one
    /// (its filters, its stemmer) costs more than analyzing a short text.
    static PIPELINES: RefCell<HashMap<Analyzer, TextAnalyzer>> = RefCell::new(HashMap::new());
}

/// Calls `f` with each term of `text` under `analyzer`, in order
/// (what [`terms`] collects), without allocating per term.
pub(crate) fn for_each_term(analyzer: Analyzer, text: &str, mut f: impl FnMut(&str)) {
    PIPELINES.with(|cell| {
        let mut pipelines = cell.borrow_mut();
        let pipeline = pipelines
            .entry(analyzer)
            .or_insert_with(|| pipeline(analyzer));
        let mut stream = pipeline.token_stream(text);
        while stream.advance() {
            let token = stream.token().text.as_str();
            if analyzer.is_cjk() && token.chars().any(is_cjk) {
                cjk_bigrams(token, &mut f);
            } else {
                f(token);
            }
        }
    })
}

fn language(analyzer: Analyzer) -> Option<Language> {
    Some(match analyzer {
        Analyzer::En => Language::English,
        Analyzer::Fr => Language::French,
        Analyzer::Es => Language::Spanish,
        Analyzer::Pt => Language::Portuguese,
        Analyzer::It => Language::Italian,
        Analyzer::De => Language::German,
        Analyzer::Nl => Language::Dutch,
        Analyzer::Standard | Analyzer::Zh | Analyzer::Ja | Analyzer::Ko => return None,
    })
}

fn pipeline(analyzer: Analyzer) -> TextAnalyzer {
    let base = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TERM_BYTES + 1))
        .filter(LowerCaser);
    match language(analyzer) {
        None => base.build(),
        Some(lang) => {
            let stemmed = base.dynamic();
            let stemmed = match StopWordFilter::new(lang) {
                Some(stop) => stemmed.filter_dynamic(stop),
                None => stemmed,
            };
            stemmed.filter_dynamic(Stemmer::new(lang)).build()
        }
    }
}

/// Han, Hiragana, Katakana and Hangul: scripts written without spaces
/// between words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF       // Hangul Jamo
        | 0x3040..=0x30FF     // Hiragana, Katakana
        | 0x3130..=0x318F     // Hangul Compatibility Jamo
        | 0x3400..=0x4DBF     // CJK Extension A
        | 0x4E00..=0x9FFF     // CJK Unified Ideographs
        | 0xAC00..=0xD7AF     // Hangul Syllables
        | 0xF900..=0xFAFF     // CJK Compatibility Ideographs
        | 0xFF66..=0xFF9F     // Halfwidth Katakana
        | 0x20000..=0x2FA1F) // CJK Extensions B-F, Compatibility Supplement
}

/// Splits a token into its non-CJK runs (kept whole) and, per CJK run,
/// its overlapping character bigrams (a lone CJK character is a term).
fn cjk_bigrams(token: &str, f: &mut impl FnMut(&str)) {
    // Byte offsets of every character, and the token's end.
    let at: Vec<(usize, bool)> = token.char_indices().map(|(i, c)| (i, is_cjk(c))).collect();
    let end = |k: usize| at.get(k).map_or(token.len(), |&(i, _)| i);
    let mut k = 0;
    while k < at.len() {
        let (start, cjk) = (k, at[k].1);
        while k < at.len() && at[k].1 == cjk {
            k += 1;
        }
        if !cjk || k - start == 1 {
            f(&token[at[start].0..end(k)]);
        } else {
            for j in start..k - 1 {
                f(&token[at[j].0..end(j + 2)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_lowercases_and_splits_on_punctuation() {
        assert_eq!(
            terms(Analyzer::Standard, "Small INI library, for Python-3!"),
            ["small", "ini", "library", "for", "python", "3"]
        );
    }

    #[test]
    fn english_drops_stop_words_and_stems() {
        assert_eq!(
            terms(Analyzer::En, "The libraries for parsing files"),
            ["librari", "pars", "file"]
        );
        // The query and the document meet on the stem.
        assert_eq!(
            terms(Analyzer::En, "library"),
            terms(Analyzer::En, "libraries")
        );
    }

    #[test]
    fn each_language_stems_its_own_words() {
        assert_eq!(terms(Analyzer::Fr, "les bibliothèques"), ["bibliothequ"]);
        assert_eq!(terms(Analyzer::De, "die Bibliotheken"), ["bibliothek"]);
        assert_eq!(terms(Analyzer::Es, "las bibliotecas"), ["bibliotec"]);
        // The standard analyzer neither stems nor drops words.
        assert_eq!(
            terms(Analyzer::Standard, "les bibliothèques"),
            ["les", "bibliothèques"]
        );
    }

    #[test]
    fn cjk_runs_become_bigrams_and_latin_stays_whole() {
        assert_eq!(terms(Analyzer::Zh, "向量搜索"), ["向量", "量搜", "搜索"]);
        assert_eq!(
            terms(Analyzer::Ja, "ベクトル検索 engine"),
            ["ベク", "クト", "トル", "ル検", "検索", "engine"]
        );
        assert_eq!(terms(Analyzer::Ko, "검색"), ["검색"]);
        assert_eq!(terms(Analyzer::Zh, "猫"), ["猫"]);
        assert_eq!(terms(Analyzer::Zh, "S3向量"), ["s3", "向量"]);
    }

    #[test]
    fn overlong_tokens_are_dropped() {
        let long = "a".repeat(MAX_TERM_BYTES + 1);
        let fits = "b".repeat(MAX_TERM_BYTES);
        assert_eq!(terms(Analyzer::Standard, &format!("{long} {fits}")), [fits]);
    }
}
