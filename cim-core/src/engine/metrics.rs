//! The engine's metrics, through the [`metrics`] facade: binds and their refusals, kicks,
//! connections open and closed by reason, messages sent, delivered, stored, replayed,
//! acknowledged and dropped, and the store's append time.
//!
//! Every series is registered once, when its owner is built (a [`Hub`](crate::engine::Hub), a
//! [`LocalRouter`](crate::engine::LocalRouter), a
//! [`LocalSessionManager`](crate::engine::LocalSessionManager)), and kept as a handle: an event
//! on the message path costs the recorder's atomic add, never a look-up, a string or an
//! allocation. The recorder is whatever the process installed before building them (the
//! reference server installs a Prometheus one); with none, every handle does nothing.
//! [`describe_metrics`] gives each series its help text.

use std::sync::RwLock;
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::engine::store::{Appended, MessageStore};
use crate::error::Result;
use crate::message::Message;

/// Open long connections, by `listener` and `protocol` (a gauge).
pub const CONNECTIONS: &str = "cim_connections";
/// Long connections parked now: idle, without a task (a gauge).
pub const CONNECTIONS_PARKED: &str = "cim_connections_parked";
/// Connections that ended, by `reason`.
pub const CONNECTIONS_CLOSED: &str = "cim_connections_closed_total";
/// Successful binds.
pub const BINDS: &str = "cim_binds_total";
/// Binds refused, by `reason`.
pub const BIND_REFUSALS: &str = "cim_bind_refusals_total";
/// Kick notices sent, by who kicked (`by`).
pub const KICKS: &str = "cim_kicks_total";
/// Messages accepted for sending, by target (`to`).
pub const MESSAGES_SENT: &str = "cim_messages_sent_total";
/// Messages written to a connection (one per connection).
pub const MESSAGES_DELIVERED: &str = "cim_messages_delivered_total";
/// Messages stored for later delivery.
pub const MESSAGES_STORED: &str = "cim_messages_stored_total";
/// Stored messages handed to a connection.
pub const MESSAGES_REPLAYED: &str = "cim_messages_replayed_total";
/// Stored messages deleted by a client's acknowledgement.
pub const MESSAGES_ACKNOWLEDGED: &str = "cim_messages_acknowledged_total";
/// Messages lost, by `reason`.
pub const MESSAGES_DROPPED: &str = "cim_messages_dropped_total";
/// Pushes refused by a connection's full queue.
pub const QUEUE_FULL: &str = "cim_queue_full_total";
/// Time of one successful store append (a histogram).
pub const STORE_APPEND_SECONDS: &str = "cim_store_append_seconds";

/// Gives every series of the engine its help text and unit. Call it once the recorder is
/// installed (the reference server does).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        CONNECTIONS,
        "Open long connections, by listener and protocol."
    );
    describe_gauge!(
        CONNECTIONS_PARKED,
        "Long connections parked now: idle, without a task until input, a close or a timer resumes them (a push is written without)."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Long connections that ended, by reason."
    );
    describe_counter!(BINDS, "Successful binds.");
    describe_counter!(BIND_REFUSALS, "Binds refused, by reason.");
    describe_counter!(
        KICKS,
        "Connections sent the kick notice (999), by a newer bind or an operator."
    );
    describe_counter!(
        MESSAGES_SENT,
        "Messages accepted for sending, by target: an account, a tag, everyone."
    );
    describe_counter!(
        MESSAGES_DELIVERED,
        "Messages written to a connection, one per connection."
    );
    describe_counter!(MESSAGES_STORED, "Messages stored for later delivery.");
    describe_counter!(
        MESSAGES_REPLAYED,
        "Stored messages handed to a connection (after a bind, on request, after catching up)."
    );
    describe_counter!(
        MESSAGES_ACKNOWLEDGED,
        "Stored messages deleted by a client's acknowledgement."
    );
    describe_counter!(MESSAGES_DROPPED, "Messages lost, by reason.");
    describe_counter!(
        QUEUE_FULL,
        "Pushes a connection's full queue refused (stored instead, with a store)."
    );
    describe_histogram!(
        STORE_APPEND_SECONDS,
        Unit::Seconds,
        "Time of one successful store append, as durable as store.durability says."
    );
}

/// Why a connection ended: the `reason` label of `cim_connections_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The peer closed the connection.
    Peer,
    /// Reading failed (a reset, say).
    ReadError,
    /// The peer broke the protocol.
    ProtocolError,
    /// No bind within the bind timeout.
    BindTimeout,
    /// Never bound, and nothing written for the write-idle time.
    UnboundIdle,
    /// Heartbeats went unanswered.
    Heartbeat,
    /// Writing failed.
    WriteError,
    /// A write stalled past the write timeout.
    WriteStalled,
    /// The bind was refused and the connection closed.
    BindRefused,
    /// Its account bound on a conflicting device.
    Kicked,
    /// An operator kicked its account.
    KickedByOperator,
    /// Its queue overflowed.
    Overflow,
    /// Something in the server closed it.
    ClosedByServer,
    /// The server shut down.
    Shutdown,
}

impl Cause {
    const ALL: [Cause; 14] = [
        Cause::Peer,
        Cause::ReadError,
        Cause::ProtocolError,
        Cause::BindTimeout,
        Cause::UnboundIdle,
        Cause::Heartbeat,
        Cause::WriteError,
        Cause::WriteStalled,
        Cause::BindRefused,
        Cause::Kicked,
        Cause::KickedByOperator,
        Cause::Overflow,
        Cause::ClosedByServer,
        Cause::Shutdown,
    ];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Cause::Peer => "peer",
            Cause::ReadError => "read_error",
            Cause::ProtocolError => "protocol_error",
            Cause::BindTimeout => "bind_timeout",
            Cause::UnboundIdle => "unbound_idle",
            Cause::Heartbeat => "heartbeat",
            Cause::WriteError => "write_error",
            Cause::WriteStalled => "write_stalled",
            Cause::BindRefused => "bind_refused",
            Cause::Kicked => "kicked",
            Cause::KickedByOperator => "kicked_by_operator",
            Cause::Overflow => "overflow",
            Cause::ClosedByServer => "closed_by_server",
            Cause::Shutdown => "shutdown",
        }
    }
}

/// Why a bind was refused: the `reason` label of `cim_bind_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BindRefusal {
    /// No `uid`.
    MissingUid,
    /// A `uid` that breaks the account-id rule.
    InvalidUid,
    /// The authenticator said no (a missing or bad token).
    Unauthorized,
    /// The session manager failed.
    Failed,
}

impl BindRefusal {
    const ALL: [BindRefusal; 4] = [
        BindRefusal::MissingUid,
        BindRefusal::InvalidUid,
        BindRefusal::Unauthorized,
        BindRefusal::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            BindRefusal::MissingUid => "missing_uid",
            BindRefusal::InvalidUid => "invalid_uid",
            BindRefusal::Unauthorized => "unauthorized",
            BindRefusal::Failed => "failed",
        }
    }
}

/// What a message was sent to: the `to` label of `cim_messages_sent_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One account.
    Account,
    /// The connections with a tag.
    Tag,
    /// Every connection.
    Everyone,
}

/// The store's series, for whoever appends: the time of each append and the messages the
/// per-account cap dropped.
pub(crate) struct StoreMetrics {
    append_seconds: Histogram,
    dropped_cap: Counter,
}

impl StoreMetrics {
    pub(crate) fn register() -> Self {
        Self {
            append_seconds: metrics::histogram!(STORE_APPEND_SECONDS),
            dropped_cap: metrics::counter!(MESSAGES_DROPPED, "reason" => "max_per_account"),
        }
    }

    /// `store.append`, timed, with the messages its cap dropped counted.
    pub(crate) async fn append(
        &self,
        store: &dyn MessageStore,
        uid: &str,
        msg: &Message,
    ) -> Result<Appended> {
        let started = Instant::now();
        let appended = store.append(uid, msg).await?;
        self.append_seconds.record(started.elapsed());
        if appended.dropped > 0 {
            self.dropped_cap.increment(appended.dropped as u64);
        }
        Ok(appended)
    }
}

/// The handles of a hub's series.
pub(crate) struct EngineMetrics {
    sent: [Counter; 3],
    pub(crate) delivered: Counter,
    pub(crate) stored: Counter,
    pub(crate) replayed: Counter,
    pub(crate) acknowledged: Counter,
    pub(crate) dropped_no_store: Counter,
    pub(crate) binds: Counter,
    bind_refusals: [Counter; BindRefusal::ALL.len()],
    pub(crate) kicks_by_bind: Counter,
    pub(crate) kicks_by_operator: Counter,
    closed: [Counter; Cause::ALL.len()],
    pub(crate) store: StoreMetrics,
    /// The open-connections gauge of each listener, by the listener's name. Looked up when a
    /// connection opens and when it ends (a few entries), never held by a connection.
    connections: RwLock<Vec<(&'static str, Gauge)>>,
}

impl EngineMetrics {
    /// Registers every series with the recorder installed now.
    pub(crate) fn register() -> Self {
        use metrics::counter;
        Self {
            sent: [
                counter!(MESSAGES_SENT, "to" => "account"),
                counter!(MESSAGES_SENT, "to" => "tag"),
                counter!(MESSAGES_SENT, "to" => "everyone"),
            ],
            delivered: counter!(MESSAGES_DELIVERED),
            stored: counter!(MESSAGES_STORED),
            replayed: counter!(MESSAGES_REPLAYED),
            acknowledged: counter!(MESSAGES_ACKNOWLEDGED),
            dropped_no_store: counter!(MESSAGES_DROPPED, "reason" => "no_store"),
            binds: counter!(BINDS),
            bind_refusals: BindRefusal::ALL.map(|r| counter!(BIND_REFUSALS, "reason" => r.label())),
            kicks_by_bind: counter!(KICKS, "by" => "bind"),
            kicks_by_operator: counter!(KICKS, "by" => "operator"),
            closed: Cause::ALL.map(|c| counter!(CONNECTIONS_CLOSED, "reason" => c.label())),
            store: StoreMetrics::register(),
            connections: RwLock::new(Vec::new()),
        }
    }

    /// A message sent to `to`.
    pub(crate) fn sent(&self, to: Target) -> &Counter {
        #[allow(clippy::indexing_slicing)] // the enum's discriminants are 0..3
        &self.sent[to as usize]
    }

    /// A bind refused for `why`.
    pub(crate) fn bind_refused(&self, why: BindRefusal) {
        if let Some(c) = self.bind_refusals.get(why as usize) {
            c.increment(1);
        }
    }

    /// A connection that ended for `why`.
    pub(crate) fn closed(&self, why: Cause) {
        if let Some(c) = self.closed.get(why as usize) {
            c.increment(1);
        }
    }

    /// Registers the open-connections gauge of listener `name`, which speaks `protocol`, and
    /// returns it. A listener not registered gets one at its first connection, with its name as
    /// protocol.
    pub(crate) fn listener(&self, name: &'static str, protocol: &'static str) -> Gauge {
        use crate::engine::locks::write;
        let mut all = write(&self.connections);
        if let Some((_, g)) = all.iter().find(|(n, _)| *n == name) {
            return g.clone();
        }
        let gauge = metrics::gauge!(CONNECTIONS, "listener" => name, "protocol" => protocol);
        all.push((name, gauge.clone()));
        gauge
    }

    /// The open-connections gauge of listener `name`.
    pub(crate) fn connections(&self, name: &'static str) -> Gauge {
        let found = crate::engine::locks::read(&self.connections)
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, g)| g.clone());
        found.unwrap_or_else(|| self.listener(name, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_in_order() {
        let labels: Vec<_> = Cause::ALL.iter().map(|c| c.label()).collect();
        let mut sorted = labels.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), labels.len());
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
        for (i, r) in BindRefusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
