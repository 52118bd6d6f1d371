//! Pluggable policies: who is kicked when an account binds again ([`KickPolicy`]) and who may
//! bind at all ([`BindAuthenticator`]). Each has a default beside it.

use async_trait::async_trait;

use crate::message::SentBody;
use crate::protocol::channel;
use crate::session::Session;

/// What happens to an account's existing connection when it binds again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickDecision {
    /// Both stay.
    Keep,
    /// The old one is closed without notice (the same device reconnected).
    CloseSilently,
    /// The old one is sent the kick notice (action `999`) and closed after it is written.
    Kick,
}

/// Decides, for each existing connection of an account, what a new bind does to it.
/// Run wherever the account's sessions are known (cluster-wide in a cluster).
pub trait KickPolicy: Send + Sync + 'static {
    /// The fate of `existing` when `incoming` binds the same account.
    fn decide(&self, existing: &Session, incoming: &Session) -> KickDecision;
}

/// CIM's multi-device rule (docs/protocol.md section 6): `android` and `ios` conflict with each
/// other, as do `windows`, `web` and `mac`; other channels never conflict. A conflicting
/// connection from the same device is closed silently, from another device it is kicked; `web`
/// connections from the same device are kept (browser tabs).
#[derive(Clone, Copy, Debug, Default)]
pub struct CimKickPolicy;

fn group(ch: &str) -> Option<u8> {
    match ch {
        channel::ANDROID | channel::IOS => Some(0),
        channel::WINDOWS | channel::WEB | channel::MAC => Some(1),
        _ => None,
    }
}

impl KickPolicy for CimKickPolicy {
    fn decide(&self, existing: &Session, incoming: &Session) -> KickDecision {
        match (group(&existing.channel), group(&incoming.channel)) {
            (Some(a), Some(b)) if a == b => {}
            _ => return KickDecision::Keep,
        }
        if existing.device_id == incoming.device_id {
            if existing.channel == channel::WEB {
                KickDecision::Keep
            } else {
                KickDecision::CloseSilently
            }
        } else {
            KickDecision::Kick
        }
    }
}

/// Never closes anything: every device of an account stays connected.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeepAll;

impl KickPolicy for KeepAll {
    fn decide(&self, _: &Session, _: &Session) -> KickDecision {
        KickDecision::Keep
    }
}

/// Why a bind was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Checks a `client_bind` before the session is registered (a token check, for example).
#[async_trait]
pub trait BindAuthenticator: Send + Sync + 'static {
    /// `Ok(())` lets the bind proceed; an error refuses it with `401` and closes the connection.
    async fn authenticate(&self, request: &SentBody, session: &Session) -> Result<(), AuthError>;
}

/// Lets every bind through (the default; the server binary offers a token check).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

#[async_trait]
impl BindAuthenticator for AllowAll {
    async fn authenticate(&self, _: &SentBody, _: &Session) -> Result<(), AuthError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ch: &str, dev: &str) -> Session {
        Session {
            channel: ch.into(),
            device_id: dev.into(),
            ..Session::default()
        }
    }

    #[test]
    fn cim_rule() {
        let p = CimKickPolicy;
        assert_eq!(
            p.decide(&s("android", "a"), &s("ios", "b")),
            KickDecision::Kick
        );
        assert_eq!(
            p.decide(&s("android", "a"), &s("android", "a")),
            KickDecision::CloseSilently
        );
        assert_eq!(
            p.decide(&s("android", "a"), &s("web", "b")),
            KickDecision::Keep
        );
        assert_eq!(p.decide(&s("web", "a"), &s("mac", "b")), KickDecision::Kick);
        assert_eq!(p.decide(&s("web", "a"), &s("web", "a")), KickDecision::Keep);
        assert_eq!(
            p.decide(&s("mac", "a"), &s("web", "a")),
            KickDecision::CloseSilently
        );
        assert_eq!(p.decide(&s("app", "a"), &s("app", "b")), KickDecision::Keep);
        assert_eq!(
            p.decide(&s("uni-h5", "a"), &s("web", "b")),
            KickDecision::Keep
        );
    }
}
