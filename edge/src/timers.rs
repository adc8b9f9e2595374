//! Keeps each worker's timer wheel from waking itself for every upstream time-out.
//!
//! Every proxied request arms the upstream read time-out (a minute by default) on its worker's Tokio
//! timer wheel (`lib.rs` puts time-outs there). Tokio wakes the worker's I/O driver — an `eventfd` write,
//! then one more pass through `epoll` — whenever a new timer is due before the wheel's next wake-up, and
//! a wheel that held no timer when the worker last went idle has none: the next request's time-out
//! wakes it, from the very thread that is running. `perf stat` on the edge under `benches/proxies.sh`'s
//! load: 0.22 such writes per request, none in the minimal Pingora proxy. A timer that always runs on
//! each worker gives the wheel a wake-up less than [`TICK`] away, which no minute-long time-out precedes.

use std::cell::Cell;
use std::time::Duration;

/// Much shorter than any time-out the edge arms per request (the upstream's, WebSockets' idle one), so
/// none of them comes before the wheel's next wake-up; long enough that an idle worker wakes only once
/// a second for it.
const TICK: Duration = Duration::from_secs(1);

thread_local! {
    static TICKING: Cell<bool> = const { Cell::new(false) };
}

/// Starts the ticker on this worker's runtime the first time a request runs on it; a thread-local read
/// after that. Pingora runs one single-threaded runtime per worker thread (`work_stealing: false`), so
/// one ticker per thread is one per wheel.
pub fn keep_wheel_ticking() {
    if TICKING.get() {
        return;
    }
    // Outside a runtime (unit tests of the pipeline's parts) there is no wheel to keep.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    TICKING.set(true);
    runtime.spawn(async {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn one_ticker_a_thread_however_many_requests() {
        let before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        for _ in 0..3 {
            keep_wheel_ticking();
        }
        let after = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        assert_eq!(after, before + 1);
    }

    #[test]
    fn outside_a_runtime_it_does_nothing() {
        std::thread::spawn(|| {
            keep_wheel_ticking();
            assert!(!TICKING.get());
        })
        .join()
        .expect("the test's thread finished");
    }
}
