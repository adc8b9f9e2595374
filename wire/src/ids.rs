//! Identifiers that appear in host names: sandbox ids and preview slugs.

/// Sandbox ids and preview slugs are lowercase `[a-z0-9]`, 4–40 characters (SPEC §2), so that they fit in
/// one DNS label next to a port and a separator.
pub fn is_host_id(s: &str) -> bool {
    // Folded over every byte rather than stopping at the first bad one: every request's host comes here,
    // and the compiler checks a fold many bytes at a time.
    (4..=40).contains(&s.len())
        && s.bytes().fold(true, |ok, b| ok & (b.is_ascii_lowercase() | b.is_ascii_digit()))
}

/// A DNS label as used for deployment names and workspaces: `[a-z0-9-]`, 1–63, no leading/trailing `-`.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A host name as a tenant may claim it (preview domain, custom domain): lowercase labels, at least two.
pub fn is_hostname(s: &str) -> bool {
    s.len() <= 253 && s.split('.').count() >= 2 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_lowercase_alphanumeric_4_to_40() {
        assert!(is_host_id("k3v9x2ab"));
        assert!(is_host_id("abcd"));
        assert!(!is_host_id("abc"));
        assert!(!is_host_id(&"a".repeat(41)));
        assert!(!is_host_id("ABCD1"));
        assert!(!is_host_id("ab-cd"));
        assert!(!is_host_id("abcé"));
    }

    #[test]
    fn hostnames_need_two_valid_labels() {
        assert!(is_hostname("preview.acme.dev"));
        assert!(!is_hostname("localhost"));
        assert!(!is_hostname("-a.example.com"));
        assert!(!is_hostname("a..example.com"));
        assert!(!is_hostname("A.example.com"));
    }
}
