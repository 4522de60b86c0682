//! The username taken from a verified TLS client certificate, as mosquitto's
//! `use_identity_as_username` (the subject's Common Name) and `use_subject_as_username` (the
//! whole subject, RFC 2253: `CN=client1,O=Example Org,C=DE`).

use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::x509::X509Name;

/// Which part of the certificate becomes the username.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// The subject's first Common Name.
    CommonName,
    /// The whole subject as an RFC 2253 string.
    Subject,
}

/// The identity of a DER certificate; `None` if it cannot be parsed or has no such field.
pub fn certificate_identity(der: &[u8], source: IdentitySource) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    match source {
        IdentitySource::CommonName => subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        IdentitySource::Subject => rfc2253(subject).filter(|s| !s.is_empty()),
    }
}

/// RFC 2253: RDNs last to first, separated by `,`; multi-valued RDNs joined by `+`.
fn rfc2253(name: &X509Name<'_>) -> Option<String> {
    let registry = oid_registry();
    let mut out = String::new();
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_into(v, &mut out),
                Err(_) => {
                    out.push('#');
                    for b in attr.attr_value().data.iter() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    Some(out)
}

fn escape_into(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_identity() {
        assert_eq!(certificate_identity(b"", IdentitySource::CommonName), None);
        assert_eq!(
            certificate_identity(&[0x30, 0x03, 0x02, 0x01, 0x00], IdentitySource::Subject),
            None
        );
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        escape_into(" a,b+c ", &mut s);
        assert_eq!(s, "\\ a\\,b\\+c\\ ");
    }
}
