//! Bearer tokens: reading them from a token file and `EMBERD_TOKEN`, and
//! checking a request's `Authorization` header against them in constant time.
//!
//! Only SHA-256 digests of the tokens are kept; nothing here may log, format
//! or answer with a token.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest token accepted: a guessable token is no authentication.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Why the tokens could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {path} is readable by every user (mode {mode:o}); chmod o-rwx it")]
    WorldReadable { path: PathBuf, mode: u32 },
    #[error("the token file {path} is larger than {MAX_TOKEN_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("the token file {path} holds no token")]
    Empty { path: PathBuf },
    #[error(
        "a token in {source_name} is invalid: tokens are at least {MIN_TOKEN_LEN} printable \
         ASCII characters without spaces"
    )]
    Invalid { source_name: String },
}

/// The tokens a request may present; none means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

impl Tokens {
    /// Tokens from `file` (one per line, blank lines and `#` comments
    /// ignored; not world-readable) and from `env` (the value of `EMBERD_TOKEN`).
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Tokens, TokenError> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            let found = read_token_file(path)?;
            if found.is_empty() {
                return Err(TokenError::Empty {
                    path: path.to_owned(),
                });
            }
            for token in &found {
                checked(token, &path.display().to_string())?;
            }
            tokens.extend(found);
        }
        if let Some(token) = env.filter(|t| !t.trim().is_empty()) {
            tokens.push(checked(token.trim(), "EMBERD_TOKEN")?.to_owned());
        }
        Ok(Tokens::new(tokens))
    }

    /// These tokens, as given (tests and embedders).
    pub fn new<I, S>(tokens: I) -> Tokens
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Tokens {
            digests: tokens
                .into_iter()
                .map(|t| digest(t.as_ref().as_bytes()))
                .collect(),
        }
    }

    /// True when no token is configured: every request is let through.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// `presented` is one of the tokens. Compares digests in constant time,
    /// against every token, so the time says nothing of which or how much matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut any = subtle::Choice::from(0);
        for known in &self.digests {
            any |= known.ct_eq(&presented);
        }
        any.into()
    }

    /// The request's `Authorization: Bearer <token>` names one of the tokens.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let scheme = b"bearer ";
        if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return false;
        }
        self.accepts(value[scheme.len()..].trim_ascii())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn checked<'a>(token: &'a str, source_name: &str) -> Result<&'a str, TokenError> {
    let valid = token.len() >= MIN_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(token)
    } else {
        Err(TokenError::Invalid {
            source_name: source_name.to_owned(),
        })
    }
}

/// The file's tokens; its mode is checked on the opened file, not the path.
fn read_token_file(path: &Path) -> Result<Vec<String>, TokenError> {
    let read = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let metadata = file.metadata().map_err(read)?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(TokenError::WorldReadable {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_TOKEN_FILE {
        return Err(TokenError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(parse_token_lines(&text)
        .into_iter()
        .map(str::to_owned)
        .collect())
}

/// One token a line; blank lines and lines starting with `#` are skipped.
fn parse_token_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const TOKEN: &str = "0123456789abcdef-token";

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_a_configured_bearer_token_is_accepted() {
        let tokens = Tokens::new([TOKEN, "another-token-0123456"]);
        assert!(tokens.authorizes(&headers(&format!("Bearer {TOKEN}"))));
        assert!(tokens.authorizes(&headers(&format!("bearer {TOKEN}"))));
        assert!(tokens.authorizes(&headers("Bearer another-token-0123456")));
        assert!(!tokens.authorizes(&headers(&format!("Bearer {TOKEN}x"))));
        assert!(!tokens.authorizes(&headers(&format!("Basic {TOKEN}"))));
        assert!(!tokens.authorizes(&headers(TOKEN)));
        assert!(!tokens.authorizes(&headers("Bearer ")));
        assert!(!tokens.authorizes(&HeaderMap::new()));
    }

    #[test]
    fn the_file_has_one_token_a_line_with_comments_and_blanks() {
        let text =
            "# emberd tokens\n\n  first-token-0123456789  \n#second\nthird-token-0123456789\n";
        assert_eq!(
            parse_token_lines(text),
            ["first-token-0123456789", "third-token-0123456789"]
        );
    }

    fn token_file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_world_readable_token_file_is_refused() {
        let (_dir, path) = token_file(&format!("{TOKEN}\n"), 0o644);
        let err = Tokens::load(Some(&path), None).unwrap_err();
        assert!(
            matches!(err, TokenError::WorldReadable { mode: 0o644, .. }),
            "{err}"
        );

        let (_dir, path) = token_file(&format!("{TOKEN}\n"), 0o640);
        let tokens = Tokens::load(Some(&path), None).unwrap();
        assert!(tokens.accepts(TOKEN.as_bytes()));
    }

    #[test]
    fn empty_files_and_short_tokens_are_refused() {
        let (_dir, path) = token_file("# nothing\n\n", 0o600);
        assert!(matches!(
            Tokens::load(Some(&path), None),
            Err(TokenError::Empty { .. })
        ));
        let (_dir, path) = token_file("short\n", 0o600);
        assert!(matches!(
            Tokens::load(Some(&path), None),
            Err(TokenError::Invalid { .. })
        ));
        assert!(matches!(
            Tokens::load(None, Some("has a space in it 0123")),
            Err(TokenError::Invalid { .. })
        ));
    }

    #[test]
    fn the_file_and_the_variable_add_up_and_an_empty_variable_is_none() {
        let (_dir, path) = token_file(&format!("{TOKEN}\n"), 0o600);
        let tokens = Tokens::load(Some(&path), Some("from-the-env-0123456789")).unwrap();
        assert!(tokens.accepts(TOKEN.as_bytes()));
        assert!(tokens.accepts(b"from-the-env-0123456789"));
        assert!(Tokens::load(None, Some("  ")).unwrap().is_empty());
        assert!(Tokens::load(None, None).unwrap().is_empty());
    }

    #[test]
    fn debug_output_shows_no_token() {
        let text = format!("{:?}", Tokens::new([TOKEN]));
        assert!(!text.contains(TOKEN), "{text}");
    }
}
