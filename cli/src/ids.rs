//! Job ids abbreviated to a unique prefix.
//!
//! A full id (a UUID, with or without hyphens, in any case) is used as it
//! is. Anything else is a prefix: its hyphens are ignored and it must be hex
//! digits; the caller lists every job it may see and [`resolve`] picks the
//! one whose id starts with it. No match is "not found"; several matches are
//! a usage error that lists them.

use std::str::FromStr;

use jobworker_ipc::JobId;

use crate::exit::CliError;

/// What an id argument is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdArg {
    /// A complete id, in canonical form (hyphenated, lowercase).
    Full(String),
    /// A prefix to look up: lowercase hex digits without hyphens.
    Prefix(String),
}

/// Classifies an id argument.
pub fn parse(arg: &str) -> Result<IdArg, CliError> {
    let arg = arg.trim();
    if let Ok(id) = JobId::from_str(arg) {
        return Ok(IdArg::Full(id.to_string()));
    }
    let prefix: String = arg
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) || prefix.len() > 32 {
        return Err(CliError::Usage(format!(
            "{arg:?} is not a job id or the start of one (job ids are UUIDs of hex digits)"
        )));
    }
    Ok(IdArg::Prefix(prefix))
}

/// Picks the one id among `ids` that starts with `prefix` (as returned by
/// [`parse`]); `given` is the argument as the user wrote it, for messages.
pub fn resolve<'a>(
    given: &str,
    prefix: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<String, CliError> {
    let mut matches: Vec<String> = ids
        .into_iter()
        .filter(|id| {
            let plain: String = id.chars().filter(|c| *c != '-').collect();
            plain.to_ascii_lowercase().starts_with(prefix)
        })
        .map(str::to_owned)
        .collect();
    matches.sort();
    matches.dedup();
    match matches.len() {
        0 => Err(CliError::NoSuchJob {
            prefix: given.to_owned(),
        }),
        1 => Ok(matches.remove(0)),
        _ => Err(CliError::AmbiguousId {
            prefix: given.to_owned(),
            candidates: matches,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;

    const A: &str = "3f2a9c1e-0b4d-4e5f-8a6b-7c8d9e0f1a2b";
    const B: &str = "3f2b0000-0000-4000-8000-000000000000";
    const C: &str = "aa000000-0000-4000-8000-000000000000";

    #[test]
    fn full_ids_are_taken_as_they_are() {
        assert_eq!(parse(A).unwrap(), IdArg::Full(A.into()));
        assert_eq!(parse(&A.to_uppercase()).unwrap(), IdArg::Full(A.into()));
        assert_eq!(
            parse(&A.replace('-', "")).unwrap(),
            IdArg::Full(A.into()),
            "the simple form is a full id too"
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse("3F2A").unwrap(), IdArg::Prefix("3f2a".into()));
        assert_eq!(
            parse("3f2a9c1e-0b").unwrap(),
            IdArg::Prefix("3f2a9c1e0b".into())
        );
        for bad in ["", "-", "xyz", "3f2g", &format!("{A}0")] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), exit::USAGE, "{bad}");
        }
    }

    #[test]
    fn a_unique_prefix_resolves() {
        let ids = [A, B, C];
        assert_eq!(resolve("3f2a", "3f2a", ids).unwrap(), A);
        assert_eq!(resolve("a", "a", ids).unwrap(), C);
        // Hyphens in the ids do not get in the way of a longer prefix.
        assert_eq!(resolve("3f2a9c1e0b", "3f2a9c1e0b", ids).unwrap(), A);
    }

    #[test]
    fn no_match_is_not_found() {
        let err = resolve("bb", "bb", [A, B, C]).unwrap_err();
        assert_eq!(err.exit_code(), exit::NOT_FOUND);
        assert!(err.to_string().contains("\"bb\""), "{err}");
        assert_eq!(
            resolve("3f", "3f", []).unwrap_err().exit_code(),
            exit::NOT_FOUND
        );
    }

    #[test]
    fn an_ambiguous_prefix_lists_the_candidates() {
        let err = resolve("3F", "3f", [C, B, A, A]).unwrap_err();
        assert_eq!(err.exit_code(), exit::USAGE);
        match &err {
            CliError::AmbiguousId { candidates, .. } => assert_eq!(candidates, &[A, B]),
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(A) && text.contains(B) && text.contains("\"3F\""),
            "{text}"
        );
    }
}
