//! Bind tokens: an HMAC-SHA256 signature over the account and an expiry, minted by a back-end
//! that knows the secret (`cim-server token --uid U`, `POST /api/v1/tokens`, or
//! [`TokenSigner::mint`]) and checked at bind ([`TokenAuthenticator`]) and, optionally, at the
//! WebSocket upgrade ([`TokenHandshake`]).
//!
//! A token reads `v1.<expiry, Unix seconds>.<hex signature>`; the signature covers the uid's
//! length, the uid and the expiry, so a token is good for one account until it expires.

use async_trait::async_trait;
use cim_core::engine::{AuthError, BindAuthenticator};
use cim_core::protocol::bind;
use cim_core::{SentBody, Session};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::transport::ws::{HandshakeCheck, HandshakeRequest};

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("token required")]
    Missing,
    /// Not of the form `v1.<expiry>.<signature>`.
    #[error("malformed token")]
    Malformed,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Not signed with our secret for this account.
    #[error("invalid token")]
    BadSignature,
}

/// Mints and checks tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenSigner {
    /// A signer with `secret`.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self {
            secret: secret.as_ref().to_vec(),
        }
    }

    fn mac(&self, uid: &str, expires: u64) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("{}:{uid}:{expires}", uid.len()).as_bytes());
        mac
    }

    /// A token for `uid` valid until `expires` (Unix seconds).
    pub fn mint(&self, uid: &str, expires: u64) -> String {
        let sig = self.mac(uid, expires).finalize().into_bytes();
        format!("v1.{expires}.{}", hex::encode(sig))
    }

    /// Checks `token` for `uid` at time `now` (Unix seconds).
    pub fn verify(&self, uid: &str, token: &str, now: u64) -> Result<(), TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let mut parts = token.splitn(3, '.');
        let (Some("v1"), Some(exp), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let expires: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| TokenError::Malformed)?;
        self.mac(uid, expires)
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if now >= expires {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

/// Refuses binds without a valid token for their uid in data key `token`.
#[derive(Clone, Debug)]
pub struct TokenAuthenticator(pub TokenSigner);

#[async_trait]
impl BindAuthenticator for TokenAuthenticator {
    async fn authenticate(&self, request: &SentBody, session: &Session) -> Result<(), AuthError> {
        self.0
            .verify(&session.uid, request.get(bind::TOKEN), now_secs())
            .map_err(|e| AuthError(e.to_string()))
    }
}

/// Refuses WebSocket upgrades without `uid` and a valid `token` for it in the query string
/// (`ws://host:34567/?uid=10000&token=v1....`).
#[derive(Clone, Debug)]
pub struct TokenHandshake(pub TokenSigner);

impl HandshakeCheck for TokenHandshake {
    fn check(&self, request: &HandshakeRequest) -> Result<(), String> {
        let uid = request.query_param("uid").unwrap_or("");
        let token = request.query_param("token").unwrap_or("");
        self.0
            .verify(uid, token, now_secs())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let s = TokenSigner::new("0123456789abcdef");
        let t = s.mint("u1", 1000);
        assert_eq!(s.verify("u1", &t, 999), Ok(()));
        assert_eq!(s.verify("u1", &t, 1000), Err(TokenError::Expired));
        assert_eq!(s.verify("u2", &t, 10), Err(TokenError::BadSignature));
        assert_eq!(
            TokenSigner::new("another secret!!").verify("u1", &t, 10),
            Err(TokenError::BadSignature)
        );
        let forged = t.replace("v1.1000.", "v1.9999.");
        assert_eq!(s.verify("u1", &forged, 10), Err(TokenError::BadSignature));
        assert_eq!(s.verify("u1", "", 10), Err(TokenError::Missing));
        for bad in ["x", "v1.x.00", "v2.1.00", "v1.1.zz"] {
            assert_eq!(s.verify("u1", bad, 10), Err(TokenError::Malformed), "{bad}");
        }
    }
}
