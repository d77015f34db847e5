//! Scope values (RFC 6749 §3.3): space-separated scope tokens, in no meaningful order.

/// `held` with the scope tokens of `extra` it lacks added, in order.
pub(crate) fn union(held: &str, extra: &str) -> String {
    let mut scope: Vec<&str> = held.split_ascii_whitespace().collect();
    for token in extra.split_ascii_whitespace() {
        if !scope.contains(&token) {
            scope.push(token);
        }
    }
    scope.join(" ")
}

/// Whether `held` has every scope token of `wanted`.
pub(crate) fn covers(held: &str, wanted: &str) -> bool {
    wanted
        .split_ascii_whitespace()
        .all(|token| held.split_ascii_whitespace().any(|h| h == token))
}

/// Whether `scope` is a valid scope value: scope tokens of `%x21 / %x23-5B / %x5D-7E`
/// separated by single spaces, at least one.
pub(crate) fn is_valid(scope: &str) -> bool {
    !scope.is_empty()
        && scope.split(' ').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_keeps_order_and_adds_only_what_is_missing() {
        assert_eq!(union("read", "read write"), "read write");
        assert_eq!(union("", "a  b"), "a b");
        assert_eq!(union("a b", "b a"), "a b");
    }

    #[test]
    fn covers_asks_for_every_token() {
        assert!(covers("read write", "write read"));
        assert!(!covers("read", "read write"));
        assert!(covers("read", ""));
    }

    #[test]
    fn scope_tokens_are_checked() {
        assert!(is_valid("read write:all"));
        assert!(!is_valid(""));
        assert!(!is_valid("read  write"));
        assert!(!is_valid("quo\"te"));
        assert!(!is_valid("back\\slash"));
        assert!(!is_valid("tab\there"));
    }
}
