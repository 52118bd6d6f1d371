//! The task that owns a client's connection: it connects and binds, reconnects with back-off,
//! stays down when stopped, kicked or refused, and hands events to the application.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cim_core::{Message, ReplyBody};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{At, Command, Event, Seen, Shared, lock};
use crate::config::{ClientConfig, Endpoint};
use crate::error::ClientError;

/// How a bound session ended.
pub(super) enum End {
    /// The connection dropped or failed: reconnect.
    Lost(String),
    /// `stop`: stay down until `resume`.
    Stopped(oneshot::Sender<()>),
    /// `destroy`.
    Destroyed(oneshot::Sender<()>),
    /// Kicked by another device.
    Kicked(Message),
    /// Refused (handshake check).
    Refused(ReplyBody),
    /// Every handle and the events are gone.
    Abandoned,
}

/// What waiting (for a reconnect, or while stopped) ended with.
pub(super) enum Wake {
    Connect,
    Destroyed(oneshot::Sender<()>),
    Abandoned,
}

pub(super) struct Task {
    pub(super) config: ClientConfig,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) shared: Arc<Shared>,
    pub(super) bound_before: bool,
    pub(super) seen: Seen,
    /// The endpoint of the last successful bind: where a client that follows dispatch goes
    /// when dispatch cannot be asked.
    pub(super) last_good: Option<Endpoint>,
    /// Which dispatch URL to ask first: the one that last answered.
    pub(super) dispatch_from: usize,
    /// The node dispatch is asked to pass over: the one the last connection was lost on, or
    /// the last one named that could not be reached (none once a bind succeeds).
    pub(super) avoid: Option<String>,
    /// Commands taken while waiting for room in `events`, in order.
    pub(super) deferred: VecDeque<Command>,
}

impl Task {
    pub(super) async fn run(mut self) {
        let mut attempt = 0u32;
        // Bound connections in a row that the server closed before `stable_after`.
        let mut flaps = 0u32;
        let mut wake = Wake::Connect;
        loop {
            match wake {
                Wake::Connect => {}
                Wake::Destroyed(done) => {
                    // The last event, if there is room for it: a destroyed client waits for
                    // nobody.
                    let _ = self.events.try_send(Event::Closed {
                        reason: "destroyed".into(),
                        retry_in: None,
                    });
                    let _ = done.send(());
                    return;
                }
                Wake::Abandoned => return,
            }
            let at = match self.resolve().await {
                Ok(at) => at,
                Err(reason) => {
                    wake = self.retry_later(reason, &mut attempt).await;
                    continue;
                }
            };
            let conn =
                match tokio::time::timeout(self.config.connect_timeout, self.connect(&at.endpoint))
                    .await
                {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(ClientError::Refused(reply))) => {
                        self.emit(Event::Refused(reply)).await;
                        wake = self.stay_down().await;
                        attempt = 0;
                        continue;
                    }
                    Ok(Err(ClientError::Connect { reason, .. })) => {
                        self.pass_over(&at.node);
                        wake = self.retry_later(at.explain(reason), &mut attempt).await;
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.pass_over(&at.node);
                        wake = self
                            .retry_later(at.explain(e.to_string()), &mut attempt)
                            .await;
                        continue;
                    }
                    Err(_) => {
                        self.pass_over(&at.node);
                        let reason = format!(
                            "no bind within {:?} (connect_timeout)",
                            self.config.connect_timeout
                        );
                        wake = self.retry_later(at.explain(reason), &mut attempt).await;
                        continue;
                    }
                };
            attempt = 0;
            self.avoid = None;
            *lock(&self.shared.at) = At {
                endpoint: Some(at.endpoint.clone()),
                node: at.node.clone(),
                dispatch: at.asked,
            };
            self.last_good = Some(at.endpoint);
            let rebound = std::mem::replace(&mut self.bound_before, true);
            self.shared.connected.store(true, Ordering::Release);
            self.emit(Event::Connected { rebound }).await;
            let bound_at = tokio::time::Instant::now();
            let end = self.session(conn).await;
            self.shared.connected.store(false, Ordering::Release);
            wake = match end {
                End::Lost(reason) => {
                    // Its node may be gone: dispatch is asked to pass over it next time.
                    self.pass_over(&at.node);
                    // Closed soon after binding, again and again: something takes the account
                    // over (a second client of this device); back off as after failures.
                    let lasted = bound_at.elapsed();
                    flaps = if lasted < self.config.stable_after {
                        flaps.saturating_add(1)
                    } else {
                        0
                    };
                    // Once is a close like any (a node draining, a restart); again and again
                    // is what a second client of the device would cause.
                    let reason = match flaps {
                        0 => reason,
                        1 => format!(
                            "{reason}: closed {} ms after binding; reconnecting with back-off",
                            lasted.as_millis()
                        ),
                        _ => format!(
                            "{reason}: closed {} ms after binding, {flaps} times in a row \
                             (another connection of this account and device may be taking it \
                             over); reconnecting with back-off",
                            lasted.as_millis()
                        ),
                    };
                    let delay = self.config.backoff.delay(flaps);
                    self.emit(Event::Closed {
                        reason,
                        retry_in: Some(delay),
                    })
                    .await;
                    self.wait(Some(delay)).await
                }
                End::Stopped(done) => {
                    // `stop` returns once the connection is closed, whether or not the
                    // application has room for the event yet.
                    let _ = done.send(());
                    self.emit(Event::Closed {
                        reason: "stopped".into(),
                        retry_in: None,
                    })
                    .await;
                    self.stay_down().await
                }
                End::Destroyed(done) => Wake::Destroyed(done),
                End::Kicked(m) => self.down(Event::Kicked(m), "kicked").await,
                End::Refused(r) => self.down(Event::Refused(r), "refused").await,
                End::Abandoned => Wake::Abandoned,
            };
        }
    }

    /// Hands `event` to the application, waiting for room (back-pressure). A stop or destroy
    /// that arrives meanwhile ends the wait: the event is then dropped if there is still no
    /// room (a message the application never took is sent again by the server when receipts
    /// are on). Other commands wait their turn.
    pub(super) async fn emit(&mut self, event: Event) {
        loop {
            tokio::select! {
                biased;
                permit = self.events.reserve() => {
                    if let Ok(p) = permit {
                        p.send(event);
                    }
                    return;
                }
                cmd = self.commands.recv() => match cmd {
                    Some(c @ (Command::Stop(_) | Command::Destroy(_))) => {
                        self.deferred.push_back(c);
                        let _ = self.events.try_send(event);
                        return;
                    }
                    Some(c) => self.deferred.push_back(c),
                    None => return,
                },
            }
        }
    }

    /// The next command: one taken while an event waited for room, or a new one.
    pub(super) async fn next_command(&mut self) -> Option<Command> {
        match self.deferred.pop_front() {
            Some(c) => Some(c),
            None => self.commands.recv().await,
        }
    }

    async fn retry_later(&mut self, reason: String, attempt: &mut u32) -> Wake {
        let retry_in = self.config.backoff.delay(*attempt);
        *attempt = attempt.saturating_add(1);
        debug!(%reason, ?retry_in, "connect failed");
        self.emit(Event::ConnectFailed { reason, retry_in }).await;
        self.wait(Some(retry_in)).await
    }

    /// Reports why the connection ended, then waits for `resume` (no reconnect by itself).
    async fn down(&mut self, why: Event, reason: &str) -> Wake {
        self.emit(why).await;
        self.emit(Event::Closed {
            reason: reason.to_owned(),
            retry_in: None,
        })
        .await;
        self.stay_down().await
    }

    /// Waits until `resume` (or destroy).
    async fn stay_down(&mut self) -> Wake {
        self.wait(None).await
    }

    /// Waits `delay` (or, with `None`, for `resume`), answering commands meanwhile.
    async fn wait(&mut self, delay: Option<Duration>) -> Wake {
        let mut deadline = delay.map(|d| tokio::time::Instant::now() + d);
        loop {
            let sleep = async move {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => return Wake::Connect,
                cmd = self.next_command() => match cmd {
                    None => return Wake::Abandoned,
                    Some(Command::Request { reply, .. }) => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                    }
                    Some(Command::Ack(_)) => {}
                    Some(Command::Stop(done)) => {
                        // A stop while waiting to reconnect: wait for resume instead.
                        deadline = None;
                        let _ = done.send(());
                    }
                    Some(Command::Resume) => return Wake::Connect,
                    Some(Command::Destroy(done)) => return Wake::Destroyed(done),
                },
            }
        }
    }
}
