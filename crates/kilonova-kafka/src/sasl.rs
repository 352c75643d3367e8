//! SASL/PLAIN as Kafka clients send it (RFC 4616): the one mechanism
//! served, and the credentials taken apart.

/// The one mechanism served.
pub const PLAIN: &str = "PLAIN";

/// `[authzid] NUL authcid NUL passwd`: the username and password.
pub fn plain_credentials(bytes: &[u8]) -> Option<(&str, &str)> {
    let mut parts = bytes.splitn(3, |b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    Some((user, pass))
}

#[cfg(test)]
mod tests {
    use super::plain_credentials;

    #[test]
    fn plain_credentials_split_on_nul_and_bad_ones_are_none() {
        assert_eq!(
            plain_credentials(b"\0acme/ns\0tok.en"),
            Some(("acme/ns", "tok.en"))
        );
        assert_eq!(plain_credentials(b"z\0u\0p\0q"), Some(("u", "p\0q")));
        assert_eq!(plain_credentials(b"no-nul"), None);
        assert_eq!(plain_credentials(b"\0only-user"), None);
        assert_eq!(plain_credentials(b"\0u\0\xff"), None);
    }
}
