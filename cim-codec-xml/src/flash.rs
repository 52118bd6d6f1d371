//! The Flash socket policy of CIM 2.x's XML listener: before a Flash client opened a socket to
//! a host, the Flash Player asked that host for a cross-domain policy by sending
//! `<policy-file-request/>` and `0x00`; the server answered with a policy document and `0x00`,
//! and closed the connection. These are plain bytes and functions; the listener decides when to
//! look for the request (only in the first bytes of a connection).

/// The request, exactly as the Flash Player sends it.
pub const FLASH_POLICY_REQUEST: &[u8] = b"<policy-file-request/>\0";

/// The answer, terminator included: clients from any domain may connect to any port, as CIM
/// 2.x answered.
pub const FLASH_POLICY_ANSWER: &[u8] = b"<?xml version=\"1.0\"?><cross-domain-policy>\
<site-control permitted-cross-domain-policies=\"all\"/>\
<allow-access-from domain=\"*\" to-ports=\"*\"/></cross-domain-policy>\0";

/// What the first bytes of a connection say about a Flash policy request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyProbe {
    /// They begin with the whole request: answer it and close.
    Request,
    /// They are a beginning of the request (or nothing yet): read more to decide.
    Undecided,
    /// They are something else, such as a document: the connection speaks the protocol.
    Other,
}

/// Classifies the first bytes `first` of a connection. Looks at no more than the request's
/// length, so the cost is the same however much has arrived.
pub fn probe_flash_policy(first: &[u8]) -> PolicyProbe {
    if first.starts_with(FLASH_POLICY_REQUEST) {
        PolicyProbe::Request
    } else if FLASH_POLICY_REQUEST.starts_with(first) {
        PolicyProbe::Undecided
    } else {
        PolicyProbe::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe() {
        assert_eq!(
            probe_flash_policy(b"<policy-file-request/>\0"),
            PolicyProbe::Request
        );
        assert_eq!(
            probe_flash_policy(b"<policy-file-request/>\0<sent>"),
            PolicyProbe::Request
        );
        for partial in [&b""[..], b"<", b"<policy-", b"<policy-file-request/>"] {
            assert_eq!(probe_flash_policy(partial), PolicyProbe::Undecided);
        }
        for other in [
            &b"<?xml version=\"1.0\"?><sent>"[..],
            b"<sent>",
            b"C_H_RS\x08",
            b"<policy-file-request/>\x08",
            b"<POLICY-file-request/>\0",
        ] {
            assert_eq!(probe_flash_policy(other), PolicyProbe::Other);
        }
    }

    #[test]
    fn answer_is_one_terminated_document() {
        let (last, doc) = FLASH_POLICY_ANSWER.split_last().unwrap();
        assert_eq!(*last, 0);
        let doc = std::str::from_utf8(doc).unwrap();
        assert!(!doc.contains('\0'));
        assert!(doc.starts_with("<?xml") && doc.ends_with("</cross-domain-policy>"));
        assert!(doc.contains(r#"<allow-access-from domain="*" to-ports="*"/>"#));
    }
}
