//! Labels on jobs, and the selectors that find jobs by them.
//!
//! A job carries up to [`MAX_LABELS`] `key=value` pairs, fixed at its start.
//! Keys and values are short and drawn from a small alphabet (letters,
//! digits, `.`, `_`, `-`, and `/` in keys), so that they are safe to print on
//! any terminal and to pass on any command line. A [`LabelSelector`] is a set
//! of pairs a job must all carry to be listed.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::Invalid;

/// The most labels one job carries, and the most pairs one selector holds.
pub const MAX_LABELS: usize = 16;
/// The longest label key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// A job's labels: key -> value, at most [`MAX_LABELS`], each valid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Validates a set of labels; `field` names it in errors (`labels`, or
    /// `label_selector`).
    pub fn new(field: &str, labels: BTreeMap<String, String>) -> Result<Self, Invalid> {
        if labels.len() > MAX_LABELS {
            return Err(Invalid {
                field: field.into(),
                reason: format!("{} labels, the limit is {MAX_LABELS}", labels.len()),
            });
        }
        for (key, value) in &labels {
            check_key(field, key)?;
            check_value(field, key, value)?;
        }
        Ok(Self(labels))
    }

    /// Parses `key=value` pairs (as a command line takes them); a key given
    /// twice is refused.
    pub fn parse<'a>(
        field: &str,
        pairs: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, Invalid> {
        let mut labels = BTreeMap::new();
        for pair in pairs {
            let (key, value) = pair.split_once('=').ok_or_else(|| Invalid {
                field: field.into(),
                reason: format!("{} is not key=value", quoted(pair)),
            })?;
            if labels.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(Invalid {
                    field: format!("{field}[{}]", quoted(key)),
                    reason: "is given twice".into(),
                });
            }
        }
        Self::new(field, labels)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The pairs as a map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Whether these labels hold every pair of `selector`.
    pub fn matches(&self, selector: &LabelSelector) -> bool {
        selector
            .0
            .iter()
            .all(|(key, value)| self.0.get(key.as_str()).map(String::as_str) == Some(value))
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = Invalid;

    fn try_from(labels: BTreeMap<String, String>) -> Result<Self, Invalid> {
        Self::new("labels", labels)
    }
}

impl fmt::Display for Labels {
    /// `key=value,key=value`, in key order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// Which jobs a listing holds: those carrying every one of these labels
/// (all jobs when empty).
pub type LabelSelector = Labels;

/// A key: 1 to [`MAX_LABEL_KEY_LEN`] bytes of ASCII letters, digits, `.`,
/// `_`, `-` and `/`, beginning and ending with a letter or digit.
fn check_key(field: &str, key: &str) -> Result<(), Invalid> {
    let invalid = |reason: String| Invalid {
        field: format!("{field}[{}]", quoted(key)),
        reason,
    };
    if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN {
        return Err(invalid(format!(
            "a key must be 1 to {MAX_LABEL_KEY_LEN} bytes long"
        )));
    }
    if !key.bytes().all(|b| is_label_byte(b) || b == b'/') || !alphanumeric_ends(key) {
        return Err(invalid(
            "a key holds only letters, digits, '.', '_', '-' and '/', and begins and ends \
             with a letter or digit"
                .into(),
        ));
    }
    Ok(())
}

/// A value: 0 to [`MAX_LABEL_VALUE_LEN`] bytes of ASCII letters, digits, `.`,
/// `_` and `-`, beginning and ending with a letter or digit when not empty.
fn check_value(field: &str, key: &str, value: &str) -> Result<(), Invalid> {
    let invalid = |reason: String| Invalid {
        field: format!("{field}[{}]", quoted(key)),
        reason,
    };
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err(invalid(format!(
            "the value is {} bytes long, the limit is {MAX_LABEL_VALUE_LEN}",
            value.len()
        )));
    }
    if !value.is_empty() && (!value.bytes().all(is_label_byte) || !alphanumeric_ends(value)) {
        return Err(invalid(
            "a value holds only letters, digits, '.', '_' and '-', and begins and ends with a \
             letter or digit"
                .into(),
        ));
    }
    Ok(())
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn alphanumeric_ends(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A key or pair as an error may quote it: at most 64 characters, escaped
/// (it came from a user and may hold anything).
fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s
        .chars()
        .take(MAX)
        .collect::<String>()
        .escape_default()
        .to_string();
    if s.chars().count() > MAX {
        out.push_str("...");
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[&str]) -> Result<Labels, Invalid> {
        Labels::parse("labels", pairs.iter().copied())
    }

    #[test]
    fn valid_labels_parse_and_print_in_key_order() {
        let l = labels(&["team=build", "env=ci", "k8s.io/app=web-1", "empty="]).unwrap();
        assert_eq!(l.to_string(), "empty=,env=ci,k8s.io/app=web-1,team=build");
        assert!(labels(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_labels_are_refused_naming_the_label() {
        for (pairs, field) in [
            (vec!["team"], "labels"),
            (vec!["=x"], "labels[\"\"]"),
            (vec!["team=a b"], "labels[\"team\"]"),
            (vec!["team=\u{1b}[31m"], "labels[\"team\"]"),
            (vec!["-team=x"], "labels[\"-team\"]"),
            (vec!["team=x-"], "labels[\"team\"]"),
            (vec!["team=x", "team=y"], "labels[\"team\"]"),
        ] {
            let err = labels(&pairs).unwrap_err();
            assert_eq!(err.field, field, "{pairs:?}: {err}");
        }
        let long = format!("k={}", "v".repeat(MAX_LABEL_VALUE_LEN + 1));
        labels(&[&long]).unwrap_err();
        let key = "k".repeat(1000);
        let err = labels(&[&format!("{key}=v")]).unwrap_err();
        assert!(err.field.len() < 100, "the error quotes a long key whole");
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}=v")).collect();
        let err = Labels::parse("labels", many.iter().map(String::as_str)).unwrap_err();
        assert!(err.reason.contains("the limit is 16"), "{err}");
    }

    #[test]
    fn a_selector_matches_jobs_carrying_all_its_pairs() {
        let job = labels(&["team=build", "env=ci"]).unwrap();
        assert!(job.matches(&labels(&[]).unwrap()));
        assert!(job.matches(&labels(&["team=build"]).unwrap()));
        assert!(job.matches(&labels(&["team=build", "env=ci"]).unwrap()));
        assert!(!job.matches(&labels(&["team=build", "env=prod"]).unwrap()));
        assert!(!job.matches(&labels(&["owner=x"]).unwrap()));
    }

    #[test]
    fn decoding_validates() {
        let bad: BTreeMap<String, String> = [("a b".into(), "x".into())].into();
        let json = serde_json::to_string(&bad).unwrap();
        serde_json::from_str::<Labels>(&json).unwrap_err();
    }
}
