//! Helpers shared by the integration tests: real HTTP and gRPC servers on free ports, clients,
//! a flaky downstream, event collectors, breaker configurations, the store contract and a real
//! redis-server. Each test binary uses a subset.
#![allow(dead_code)]

pub mod alloc;
pub mod breakers;
pub mod child;
pub mod events;
pub mod flaky;
pub mod grpc;
pub mod http;
pub mod ledger;
pub mod nats;
pub mod outage;
pub mod postgres;
pub mod proxy;
pub mod rabbitmq;
pub mod redis_server;
pub mod store_contract;
