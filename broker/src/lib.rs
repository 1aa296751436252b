//! credbroker: a short-lived workload credential broker.
//!
//! Workloads prove what they are ([`attest`]), and receive X.509-SVIDs and
//! JWT-SVIDs ([`issue`]) that live minutes, scoped by their identity's
//! [`policy`]. Keys are per environment ([`keys`]); state lives behind one
//! [`store`] trait, which several brokers may share ([`replica`]);
//! operators use the admin API ([`api`]) and CLI ([`cli`]).

#![warn(missing_docs)]

pub mod anomaly;
pub mod api;
pub mod attest;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod issue;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod replica;
pub mod revocation;
pub mod server;
pub mod store;
pub mod ui;

pub use broker::{Broker, StartError};
pub use config::Config;
pub use server::{RunningBroker, start};
