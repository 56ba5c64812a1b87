//! Policy errors: every one names the file, line and column (1-based) and what was expected.

use std::fmt;

/// A policy file that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{column}: {kind}")]
pub struct PolicyError {
    /// The path the caller gave for messages.
    pub path: String,
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column, in characters (a tab counts as one).
    pub column: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// What is wrong with a policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// TOML syntax, a wrong type, an unknown key or value: the parser's own words, which
    /// say what was expected (e.g. "unknown field `uplink`, expected one of ...").
    #[error("{}", one_line(.0))]
    Toml(String),
    /// The file does not start by saying which format version it is.
    #[error("missing `version = 1`")]
    MissingVersion,
    /// A format version this build does not read.
    #[error("unsupported version {0}; expected version = 1")]
    UnsupportedVersion(i64),
    /// An uplink name the daemon's config does not define.
    #[error("unknown uplink {name:?}; the config has: {known}")]
    UnknownUplink {
        /// The name in the policy.
        name: String,
        /// The config's uplinks, comma separated.
        known: KnownUplinks,
    },
    /// The same uplink twice in one list.
    #[error("uplink {0:?} is listed twice")]
    DuplicateUplink(String),
    /// `uplinks = []`.
    #[error(
        "empty uplink list; expected at least one uplink (to block an app, use action = \"block\")"
    )]
    EmptyUplinks,
    /// A `[[rule]]` without `app` or `uid`.
    #[error("rule matches nothing; expected `app = \"name\"`, `app = \"glob.*\"` or `uid = N`")]
    NoMatcher,
    /// A `[[rule]]` with both `app` and `uid`.
    #[error(
        "rule has both `app` and `uid`; expected one of them (write two rules to match either)"
    )]
    BothMatchers,
    /// `app = ""`.
    #[error("empty app name; expected a name or a glob")]
    EmptyApp,
    /// An `app` glob that does not compile.
    #[error("invalid glob {pattern:?}: {}", one_line(.reason))]
    BadGlob {
        /// The pattern as written.
        pattern: String,
        /// globset's explanation (kept as text: `globset::Error` repeats the pattern).
        reason: String,
    },
    /// A key that only makes sense for tunnelled traffic, on a bypass or block rule.
    #[error(
        "`{key}` has no meaning with action = \"{action}\"; expected it only with action = \"tunnel\""
    )]
    MeaninglessKey {
        /// The key.
        key: &'static str,
        /// The rule's action.
        action: &'static str,
    },
    /// `when_none` without an `uplinks` list to fall back from.
    #[error("`when_none` needs an `uplinks` list; expected `uplinks = [...]` in the same rule")]
    WhenNoneWithoutUplinks,
    /// A strategy the format reserves but this build does not implement.
    #[error("strategy \"{0}\" is not supported yet; expected \"ordered\" or \"lowest-rtt\"")]
    StrategyNotSupported(&'static str),
    /// Both `select` and its older name `strategy` in one rule.
    #[error("`strategy` is the older name of `select`; expected only `select` in this rule")]
    SelectAndStrategy,
    /// `spread = true` with a measured `select`: spreading and picking the best contradict.
    #[error(
        "`spread` cannot be combined with select = \"{0}\"; expected select = \"order\" (the default) with spread"
    )]
    SpreadWithSelect(&'static str),
    /// `move_existing = true` without a measured `select`.
    #[error(
        "`move_existing` needs select = \"lowest_rtt\" or \"lowest_loss\" (with select = \"order\" existing flows already follow the order)"
    )]
    MoveExistingWithoutMeasure,
}

/// `text` with line breaks escaped: names and values from the file (a string may hold "\n") are
/// echoed in errors, which must stay one line.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\n', '\r']) {
        text.replace('\n', "\\n").replace('\r', "\\r").into()
    } else {
        text.into()
    }
}

/// The config's uplink names, displayed comma separated (or "none").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownUplinks(pub Vec<String>);

impl fmt::Display for KnownUplinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}

/// 1-based (line, column) of byte `offset` in `text`; column counts characters. Offsets past
/// the end or inside a character are clamped, never a panic.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_characters_from_one() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 2), (1, 3));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4), "é is one column");
        assert_eq!(line_col(t, 8), (3, 1));
    }

    #[test]
    fn line_col_clamps_offsets_past_the_end_or_inside_a_character() {
        let t = "é";
        assert_eq!(line_col(t, 1), (1, 1));
        assert_eq!(line_col(t, 99), (1, 2));
    }
}
