//! ringmaster: declarative phased rollouts of IoT Hub automatic device configurations.
//!
//! Parts (one folder each, as in DESIGN.md): [`hub`] the embedded IoT hub, [`client`] the
//! `Hub` trait and its implementations, [`resources`] the `DeviceRollout` and `Hub`
//! resources and the manifest loader, [`core`] the pure decision core, [`driver`] which
//! runs the core against a hub, [`kube`] the Kubernetes controller (`run --kube`), [`run`]
//! with [`sources`] and [`state`] the git and directory modes, [`api`] their HTTP API, [`ops`]
//! the operator commands, [`server`] the hub's REST API, [`demo`] which plays all of it in one process in virtual time, and
//! the CLI in `main.rs`.

pub mod budget;
pub mod cli;
pub mod client;
pub mod clock;
pub mod core;
pub mod demo;
pub mod driver;
pub mod duration;
pub mod hub;
pub mod iothub;
pub mod kube;
pub mod manifest;
pub mod metrics;
pub mod ops;
pub mod resources;
pub mod run;
