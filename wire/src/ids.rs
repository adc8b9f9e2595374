//! Identifiers that appear in host names: sandbox ids and preview slugs.

/// Sandbox ids and preview slugs are lowercase `[a-z0-9]`, 4–40 characters (SPEC §2), so that they fit in
/// one DNS label next to a port and a separator.
pub fn is_host_id(s: &str) -> bool {
    // Every request's host comes here: one table look-up a byte, no range comparisons.
    (4..=40).contains(&s.len()) && s.bytes().all(|b| LABEL_BYTES[usize::from(b)] == ALNUM)
}

/// What each byte may be in a label: `ALNUM`, `DASH` or neither (0).
const LABEL_BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            ALNUM
        } else if c == b'-' {
            DASH
        } else {
            0
        };
        b += 1;
    }
    table
};
const ALNUM: u8 = 1;
const DASH: u8 = 2;

/// A DNS label as used for deployment names and workspaces: `[a-z0-9-]`, 1–63, no leading/trailing `-`.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| LABEL_BYTES[usize::from(b)] != 0)
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
