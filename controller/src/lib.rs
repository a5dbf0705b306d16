//! The berth controller: PKI, SQLite store, HTTPS API and the operator CLI that talks to it.

pub mod agent_binary_cmd;
pub mod api;
pub mod backup;
pub mod backup_cmd;
pub mod blobs;
pub mod bundle_archive;
pub mod bundle_cmd;
pub mod cli;
pub mod client;
pub mod cluster_cmd;
pub mod clusterfile_template;
pub mod coalesce;
pub mod config;
pub mod engine;
pub mod events_cmd;
pub mod exec_cmd;
pub mod heartbeats;
pub mod image_cmd;
pub mod image_import;
pub mod install;
pub mod lane;
pub mod metrics;
pub mod output;
pub mod pki;
pub mod planner;
pub mod plans;
pub mod registry;
#[cfg(test)]
mod rollout_table;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod signals;
pub mod store;
pub mod tarfile;
pub mod time;
pub mod version_cmd;
