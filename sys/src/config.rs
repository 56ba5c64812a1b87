//! The one shape of a config error, shared by both daemons: `FILE:LINE:COLUMN: what was
//! expected`, on one line, plus the helpers that build it.
//!
//! Line and column come from [`line_col`], the policy crate's: it counts columns in characters
//! and clamps an offset that falls past the end or inside a character. `upmt-sys` re-uses it
//! rather than owning it because the policy crate is pure and must not depend on this one,
//! while this one may depend on a pure crate; a third, tiny crate for one function would cost a
//! top-level folder, which the product card fixes.

use std::ops::Range;
use std::path::{Path, PathBuf};

use upmt_proto::keys::StaticSecret;

pub use upmt_policy::line_col;

use crate::keys::{self, KeyFileError};

/// How many characters of a user-supplied value an error message echoes.
pub const SHOWN_CHARS: usize = 64;
/// How many characters of the TOML parser's own message are kept (it may quote a value whole).
pub const PARSER_MESSAGE_CHARS: usize = 240;

/// What went wrong reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, not a regular file, too large, not UTF-8).
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid, at a known place.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The `private_key_file` it names cannot be used; the place is that setting's value.
    #[error("{path}:{line}:{column}: cannot use private_key_file {key_file}")]
    KeyFile {
        path: PathBuf,
        line: usize,
        column: usize,
        key_file: PathBuf,
        #[source]
        source: KeyFileError,
    },
}

/// Reads the config file at `path` with the bounded, regular-file-only read.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    crate::file::read_bounded(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A config's text and the path it came from: what every error is placed in.
#[derive(Clone, Copy, Debug)]
pub struct ConfigText<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> ConfigText<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        ConfigText { path, text }
    }

    /// An [`ConfigError::Invalid`] at the start of `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// The TOML parser's error (its span, when it has one, and its message), with the message
    /// cut to [`PARSER_MESSAGE_CHARS`]: it quotes the offending value, which may be megabytes.
    pub fn parser_error(&self, span: Option<Range<usize>>, message: &str) -> ConfigError {
        self.error(
            span.unwrap_or(0..0),
            clip(message.trim(), PARSER_MESSAGE_CHARS),
        )
    }

    /// `file` resolved against the config's directory, so a config directory can be moved as a
    /// whole.
    pub fn resolve(&self, file: &str) -> PathBuf {
        self.path
            .parent()
            .unwrap_or(Path::new("."))
            .join(Path::new(file))
    }

    /// Reads the private key in `private_key_file = "file"`, whose value sits at `span`.
    pub fn private_key_file(
        &self,
        span: Range<usize>,
        file: &str,
    ) -> Result<StaticSecret, ConfigError> {
        let key_file = self.resolve(file);
        keys::read_private_key(&key_file).map_err(|source| {
            let (line, column) = line_col(self.text, span.start);
            ConfigError::KeyFile {
                path: self.path.to_owned(),
                line,
                column,
                key_file,
                source,
            }
        })
    }
}

/// `value` quoted for an error message, cut to its first [`SHOWN_CHARS`] characters so a
/// megabyte-long value gives a short line.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// `message` cut to its first `max` characters, with an ellipsis when something was cut.
pub fn clip(message: &str, max: usize) -> String {
    match message.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        assert_eq!(line_col("ab\ncé=x", 0), (1, 1));
        assert_eq!(line_col("ab\ncé=x", 3), (2, 1));
        assert_eq!(line_col("ab\ncé=x", 6), (2, 3));
        assert_eq!(line_col("ab", 99), (1, 3));
        assert_eq!(line_col("é = 1\nab", 7), (2, 1));
        assert_eq!(line_col("é = 1\nab", 8), (2, 2));
        assert_eq!(line_col("", 5), (1, 1));
    }

    #[test]
    fn an_offset_inside_a_character_is_clamped_not_a_panic() {
        assert_eq!(line_col("é", 1), (1, 1));
    }

    #[test]
    fn an_error_is_one_line_naming_file_line_column_and_what_was_expected() {
        let c = ConfigText::new(Path::new("/etc/upmt/x.toml"), "a = 1\nb = 2\n");
        let e = c.error(10..11, "expected a string");
        assert_eq!(e.to_string(), "/etc/upmt/x.toml:2:5: expected a string");
    }

    #[test]
    fn a_missing_key_file_is_placed_at_its_setting_and_named() {
        let text = "private_key_file = \"nope.key\"\n";
        let c = ConfigText::new(Path::new("/nonexistent/x.toml"), text);
        let e = c.private_key_file(19..29, "nope.key").unwrap_err();
        let shown = crate::display_chain(&e);
        assert!(
            shown.starts_with(
                "/nonexistent/x.toml:1:20: cannot use private_key_file /nonexistent/nope.key: "
            ),
            "{shown}"
        );
        assert!(matches!(e, ConfigError::KeyFile { .. }));
    }

    #[test]
    fn a_parser_message_quoting_a_huge_value_is_cut() {
        let c = ConfigText::new(Path::new("x.toml"), "a = 1\n");
        let e = c.parser_error(
            Some(4..5),
            &format!("invalid type: string \"{}\"", "m".repeat(1 << 20)),
        );
        assert!(e.to_string().len() < 300, "{} bytes", e.to_string().len());
        assert!(
            e.to_string()
                .starts_with("x.toml:1:5: invalid type: string \"mmm")
        );
    }

    #[test]
    fn shown_cuts_long_values_and_clip_cuts_messages() {
        assert_eq!(shown("ab"), "\"ab\"");
        assert_eq!(shown(&"x".repeat(100)), format!("\"{}\"…", "x".repeat(64)));
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
