//! The `storm` scenario on one server: N bound clients; the server restarts; the time until all
//! are bound again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::ctx::{Ctx, say};
use crate::pool::{self, Pool};
use crate::stats::rate;

pub async fn storm(ctx: &mut Ctx, n: usize) -> anyhow::Result<Value> {
    ctx.single("storm")?;
    ctx.check_fd_limits(n)?;
    let pool = Pool::open(ctx.pool_options(n, "r", true)).await?;
    let counters = std::sync::Arc::clone(&pool.counters);
    let start = Instant::now();
    let restart = tokio::task::block_in_place(|| ctx.server.restart())?;
    let up_at = start.elapsed();
    let bar = pool::progress(n as u64, "rebinding", ctx.json);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let back = counters.rebinds.load(Ordering::Acquire);
        bar.set_position(back as u64);
        if back >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("storm: {back} of {n} clients bound again within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bar.finish_and_clear();
    let all_back = start.elapsed();
    let after_up = all_back.saturating_sub(up_at);
    say(
        ctx,
        format!(
            "storm: {n} clients bound again {:.2} s after the restart began ({:.2} s after the \
             new server listened; it took {:.2} s to stop and start): {:.0} re-binds/s",
            all_back.as_secs_f64(),
            after_up.as_secs_f64(),
            restart.as_secs_f64(),
            rate(n as u64, after_up)
        ),
    );
    pool.close();
    Ok(json!({
        "scenario": "storm", "connections": n, "seconds_from_restart": all_back.as_secs_f64(),
        "seconds_after_listening": after_up.as_secs_f64(),
        "rebinds_per_sec": rate(n as u64, after_up),
    }))
}
