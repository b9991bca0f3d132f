//! Stage "check": from an item to a verdict. `template` builds URLs, `client` holds the
//! HTTP clients (TLS, HTTP/2, the idle-connection bound), `fetch` asks the server (timeouts,
//! retries, body cap), `judge` decides, `gate` says when a request may start (`slots`: the
//! order in which first attempts and retries get the run's request slots), `pool` runs many
//! at once.
//! Nothing here touches a store.

pub mod client;
pub mod fetch;
pub mod gate;
pub mod hosts;
pub mod jq;
pub mod judge;
pub mod pool;
pub mod schedule;
pub mod secrets;
pub(crate) mod slots;
pub mod template;

/// Returns once `holds` is true, woken by `notify` (its `notify_waiters`). The waiter is
/// enabled before each check, so a change that comes between the check and the wait still
/// wakes it.
pub(crate) async fn wait_until(notify: &tokio::sync::Notify, holds: impl Fn() -> bool) {
    loop {
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if holds() {
            return;
        }
        woken.await;
    }
}
