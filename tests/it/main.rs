//! Integration tests: the real `recheck` binary against the repo's mock server on 127.0.0.1.
//! One test binary (fast to link); modules by topic.

mod support;

mod bad_input;
mod cli;
mod concurrency;
mod crash;
mod encoding;
mod faults;
mod hostile;
mod import;
mod items;
mod json_store;
mod judging;
mod kindness;
mod limits;
mod method;
mod mysql;
mod outcomes;
mod outputs;
mod politeness;
mod postgres;
mod progress;
mod proxy;
mod reference;
mod retries;
mod scenarios;
mod schedule;
mod secrets;
mod seed_shape;
mod step_summary;
mod stop;
mod tls;
mod workers;
mod writeback;
