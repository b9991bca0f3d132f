//! Stage "check": from an item to a verdict. `template` builds URLs, `client` holds the
//! HTTP clients (TLS, HTTP/2, the idle-connection bound), `fetch` asks the server (timeouts,
//! retries, body cap), `judge` decides, `gate` says when a request may start, `pool` runs
//! many at once.
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
pub mod template;
