//! End-to-end tests: each starts the real `credbroker` binary over real TLS
//! with its own SQLite data directory and talks to it with the real CLI,
//! SDK and agent.

mod admin;
mod agent_bounds;
mod agent_lifecycle;
mod agent_socket;
mod attack_list;
mod attestation;
mod audit;
mod audit_durability;
mod audit_retention;
mod audit_seal;
mod binding;
mod connect_errors;
mod connection_bounds;
mod cross_env;
mod day_two;
mod first_hour;
mod happy_path;
mod jwt;
mod logs;
mod metrics;
mod node_agent;
mod operators;
mod platform_agent;
mod platform_attestation;
mod platform_selectors;
mod python_clients;
mod rate_limits;
mod request_caps;
mod request_context;
mod restart;
mod revocation;
mod revocation_race;
mod rotation;
mod scope;
mod source;
mod spiffe_api;
mod store_faults;
mod tls;
mod upstream;
mod verifier;
mod x509;
