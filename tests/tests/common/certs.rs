//! Certificates made at test time: a CA, and server certificates it signs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use sha2::{Digest, Sha256};

/// A certificate authority of a test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

/// A server certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// Base64 of the SHA-256 of the certificate's public key (SubjectPublicKeyInfo), as
    /// Chromium's `--ignore-certificate-errors-spki-list` takes it.
    pub spki_sha256: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` (host names or IP addresses), valid from 2020 to 2100.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_valid(names, (2020, 1, 1), (2100, 1, 1))
    }

    /// A certificate for `names` valid between two days (year, month, day).
    pub fn leaf_valid(
        &self,
        names: &[&str],
        (y0, m0, d0): (i32, u8, u8),
        (y1, m1, d1): (i32, u8, u8),
    ) -> Leaf {
        let not_before = rcgen::date_time_ymd(y0, m0, d0);
        let not_after = rcgen::date_time_ymd(y1, m1, d1);
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_before = not_before;
        params.not_after = not_after;
        params
            .distinguished_name
            .push(DnType::CommonName, "cim test server");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let spki = key.subject_public_key_info();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spki_sha256: base64(&Sha256::digest(&spki)),
        }
    }
}

/// The files a listener and a client read: `ca.pem`, `cert.pem`, `key.pem` in `dir`.
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca`'s certificate and `leaf` into `dir` (replacing what is there, each file
/// renamed into place whole, as a certificate renewal would).
pub fn write(dir: &Path, ca: &Ca, leaf: &Leaf) -> Files {
    let put = |name: &str, text: &str| {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    };
    Files {
        ca: put("ca.pem", &ca.pem),
        cert: put("cert.pem", &leaf.cert_pem),
        key: put("key.pem", &leaf.key_pem),
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_of_known_values() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}
