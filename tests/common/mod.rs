//! Helpers shared by the integration tests: the store contract and a real redis-server.
#![allow(dead_code)]

pub mod redis_server;
pub mod store_contract;
