//! The Lua scripts: each is the shared prelude (`lua/prelude.lua`: the prefix, the clock from
//! `redis.call('TIME')`, liveness, the counts, the store's append) and one step. Every step
//! that must be atomic with respect to another is one script. `redis::Script` sends a script's
//! hash and loads it again when Redis answers `NOSCRIPT` (after a restart).

use redis::Script;

const PRELUDE: &str = include_str!("lua/prelude.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// Every script, loaded lazily by Redis.
pub(crate) struct Scripts {
    pub(crate) route: Script,
    pub(crate) snapshot: Script,
    pub(crate) bind: Script,
    pub(crate) unbind: Script,
    pub(crate) kick: Script,
    pub(crate) tag: Script,
    pub(crate) tags_set: Script,
    pub(crate) send_tag: Script,
    pub(crate) broadcast: Script,
    pub(crate) count: Script,
    pub(crate) live: Script,
    pub(crate) register: Script,
    pub(crate) heartbeat: Script,
    pub(crate) reap_sessions: Script,
    pub(crate) reap_finish: Script,
    pub(crate) dispatch: Script,
    pub(crate) drain: Script,
    pub(crate) append: Script,
    pub(crate) clear: Script,
    pub(crate) expire: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            route: script(include_str!("lua/route.lua")),
            snapshot: script(include_str!("lua/snapshot.lua")),
            bind: script(include_str!("lua/bind.lua")),
            unbind: script(include_str!("lua/unbind.lua")),
            kick: script(include_str!("lua/kick.lua")),
            tag: script(include_str!("lua/tag.lua")),
            tags_set: script(include_str!("lua/tags_set.lua")),
            send_tag: script(include_str!("lua/send_tag.lua")),
            broadcast: script(include_str!("lua/broadcast.lua")),
            count: script(include_str!("lua/count.lua")),
            live: script(include_str!("lua/live.lua")),
            register: script(include_str!("lua/register.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            reap_sessions: script(include_str!("lua/reap_sessions.lua")),
            reap_finish: script(include_str!("lua/reap_finish.lua")),
            dispatch: script(include_str!("lua/dispatch.lua")),
            drain: script(include_str!("lua/drain.lua")),
            append: script(include_str!("lua/append.lua")),
            clear: script(include_str!("lua/clear.lua")),
            expire: script(include_str!("lua/expire.lua")),
        }
    }
}
