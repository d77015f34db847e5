//! Keeping what a request carried out of what its server answered.
//!
//! The text of an error response (`error`, `error_description`, `error_uri`, the start of a
//! body that is not JSON) goes into [`Error`](crate::Error)s, their `Display` and `Debug`, and
//! the log events that show them. Servers echo what they received (`Invalid refresh token:
//! <the token>`), so every secret the request carried is cut out of that text first, in every
//! form a server may repeat it: as sent, form-encoded, percent-encoded, JSON-escaped, and in
//! pieces of [`PIECE`] characters or more (cut short, only its end, wrapped over lines).

// Without `oauth` only the step-up challenge's check (`appears_in`) is used.
#![cfg_attr(not(feature = "oauth"), allow(dead_code))]

use std::{borrow::Cow, collections::HashSet};

use zeroize::Zeroizing;

/// What replaces a secret in server text.
pub(crate) const REDACTED: &str = "[redacted]";

/// Characters of a server's text kept in an error; the rest is cut (with `…`).
pub(crate) const LONGEST_SERVER_TEXT: usize = 512;

/// Bytes of a server's text looked at before it is cut: a larger body is not searched whole.
const LONGEST_SEARCHED: usize = 64 * 1024;

/// Any run of `PIECE` bytes or more of a secret found in server text is cut: an echo cut short,
/// its end alone, or one wrapped over lines shows none of it (a secret shorter than this is cut
/// wherever it appears whole).
const PIECE: usize = 12;

/// The secrets one request carried, each in every form a server may echo it. Wiped on drop.
#[derive(Default)]
pub(crate) struct Carried {
    forms: Vec<Zeroizing<String>>,
}

impl Carried {
    /// The secrets in `secrets` (empty ones ignored).
    pub(crate) fn of<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Carried {
        let mut carried = Carried::default();
        for secret in secrets {
            carried.add(secret);
        }
        carried
    }

    /// Adds `secret`, in each of its forms.
    pub(crate) fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let form_encoded: Zeroizing<String> =
            Zeroizing::new(form_urlencoded::byte_serialize(secret.as_bytes()).collect());
        // Percent-encoded as in a URL: a space is `%20`, and a literal `+` was already `%2B`.
        let percent_encoded = Zeroizing::new(form_encoded.replace('+', "%20"));
        let json = Zeroizing::new(serde_json::to_string(secret).unwrap_or_default());
        let json_escaped = json
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or_default();
        for form in [
            secret,
            form_encoded.as_str(),
            percent_encoded.as_str(),
            json_escaped,
        ] {
            if !form.is_empty() && !self.forms.iter().any(|known| known.as_str() == form) {
                self.forms.push(Zeroizing::new(form.to_owned()));
            }
        }
    }

    /// `text` from a server, with every carried secret cut out, control characters turned
    /// into spaces, and at most [`LONGEST_SERVER_TEXT`] characters long.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let searched = text.as_bytes();
        let searched = searched.get(..LONGEST_SEARCHED).unwrap_or(searched);
        let longer = searched.len() < text.len();
        let cut = self.cut(searched);
        let kept: Cow<'_, str> = String::from_utf8_lossy(&cut);
        let mut out: String = kept
            .chars()
            .take(LONGEST_SERVER_TEXT)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if longer || kept.chars().nth(LONGEST_SERVER_TEXT).is_some() {
            out.push('…');
        }
        out
    }

    /// Whether a carried secret, or a long enough piece of one, appears in `text`: for server
    /// text that is dropped rather than shown cut.
    pub(crate) fn appears_in(&self, text: &str) -> bool {
        self.cut(text.as_bytes()).as_slice() != text.as_bytes()
    }

    /// `text` with every range where a secret (or a long enough piece of one) appears
    /// replaced by [`REDACTED`].
    fn cut(&self, text: &[u8]) -> Zeroizing<Vec<u8>> {
        let mut secret_at = vec![false; text.len()];
        // Every `PIECE`-byte window of every long form: a window of the text that is one of
        // them is part of a secret, and runs of them cover each piece whole.
        let mut pieces: HashSet<&[u8]> = HashSet::new();
        for form in &self.forms {
            let form = form.as_bytes();
            if form.len() >= PIECE {
                pieces.extend(form.windows(PIECE));
                continue;
            }
            let mut from = 0;
            while let Some(found) = find(text.get(from..).unwrap_or_default(), form) {
                let start = from + found;
                for flag in secret_at.iter_mut().skip(start).take(form.len()) {
                    *flag = true;
                }
                from = start + form.len();
            }
        }
        if !pieces.is_empty() {
            for (start, window) in text.windows(PIECE).enumerate() {
                if pieces.contains(window) {
                    for flag in secret_at.iter_mut().skip(start).take(PIECE) {
                        *flag = true;
                    }
                }
            }
        }
        let mut out = Zeroizing::new(Vec::with_capacity(text.len()));
        let mut in_secret = false;
        for (&byte, &secret) in text.iter().zip(&secret_at) {
            if secret && !in_secret {
                out.extend_from_slice(REDACTED.as_bytes());
            }
            if !secret {
                out.push(byte);
            }
            in_secret = secret;
        }
        out
    }
}

/// Where `needle` first appears in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carried")
            .field("forms", &self.forms.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(secrets: &[&str], text: &str) -> String {
        Carried::of(secrets.iter().copied()).scrub(text)
    }

    #[test]
    fn a_secret_in_any_form_is_cut_out() {
        let secret = "rt/with spaces+plus&\"quote";
        for echo in [
            "rt/with spaces+plus&\"quote",
            "rt%2Fwith+spaces%2Bplus%26%22quote",
            "rt%2Fwith%20spaces%2Bplus%26%22quote",
            "rt/with spaces+plus&\\\"quote",
        ] {
            let text = format!("Invalid refresh token: {echo} (try again)");
            let out = scrubbed(&[secret], &text);
            assert_eq!(
                out, "Invalid refresh token: [redacted] (try again)",
                "{echo}"
            );
        }
    }

    #[test]
    fn an_echo_cut_short_shows_nothing_of_the_secret() {
        let secret = "abcdefghijklmnopqrstuvwxyz0123456789";
        let out = scrubbed(&[secret], "got abcdefghijklmnop… which is unknown");
        assert_eq!(out, "got [redacted]… which is unknown");
        // Its end alone, and the secret wrapped over three lines.
        let out = scrubbed(&[secret], "token ending …pqrstuvwxyz0123456789 refused");
        assert_eq!(out, "token ending …[redacted] refused");
        let out = scrubbed(&[secret], "abcdefghijkl\nmnopqrstuvwx\nyz0123456789");
        // (Line breaks become spaces, as every control character does.)
        assert_eq!(out, "[redacted] [redacted] [redacted]");
        // Fewer characters than a piece, from the middle of the secret: not the secret.
        assert_eq!(scrubbed(&[secret], "xyz01"), "xyz01");
    }

    #[test]
    fn short_secrets_are_cut_wherever_they_appear_and_text_is_bounded() {
        assert_eq!(scrubbed(&["ab"], "ab cab"), "[redacted] c[redacted]");
        let long = "é".repeat(2 * LONGEST_SERVER_TEXT);
        let out = scrubbed(&[], &long);
        assert_eq!(out.chars().count(), LONGEST_SERVER_TEXT + 1);
        assert!(out.ends_with('…'));
        assert_eq!(scrubbed(&[], "line\r\nbreak\u{1b}[31m"), "line  break [31m");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// A secret, anywhere in text, in any of its forms, never survives. (Secrets of
        /// characters the text around them and the `[redacted]` mark do not use, so that no
        /// secret can be put together from what is left.)
        #[test]
        fn no_secret_survives(
            secret in "[0-9/+&\" %]{1,40}",
            before in "[a-z.,:]{0,40}",
            after in "[a-z.,:]{0,40}",
            form in 0usize..4,
        ) {
            let carried = Carried::of([secret.as_str()]);
            let echo = carried.forms.get(form).map_or(secret.clone(), |f| f.to_string());
            let out = carried.scrub(&format!("{before}{echo}{after}"));
            proptest::prop_assert!(!out.contains(secret.as_str()), "{out}");
            proptest::prop_assert!(!out.contains(echo.as_str()), "{out}");
        }

        /// Any piece of a long secret (12 characters or more, from anywhere in it) is cut.
        #[test]
        fn no_piece_of_a_secret_survives(
            secret in "[0-9A-Z]{12,200}",
            start in 0usize..200,
            len in 12usize..200,
            before in "[a-z.,: ]{0,40}",
            after in "[a-z.,: ]{0,40}",
        ) {
            let start = start % (secret.len() - 11);
            let end = (start + len).min(secret.len());
            let piece = &secret[start..end];
            let out = Carried::of([secret.as_str()]).scrub(&format!("{before}{piece}{after}"));
            proptest::prop_assert_eq!(out, format!("{before}[redacted]{after}"));
        }

        /// Arbitrary text and secrets never panic, and the output is bounded.
        #[test]
        fn arbitrary_text_is_bounded(secret in "\\PC{0,20}", text in "\\PC{0,2000}") {
            let out = Carried::of([secret.as_str()]).scrub(&text);
            proptest::prop_assert!(out.chars().count() <= LONGEST_SERVER_TEXT + 1);
        }
    }
}
