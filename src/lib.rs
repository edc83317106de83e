//! ringmaster: declarative phased rollouts of IoT Hub automatic device configurations.
//!
//! Parts (one folder each, as in DESIGN.md): [`hub`] the embedded IoT hub, [`client`] the
//! `Hub` trait and its implementations, [`resources`] the `DeviceRollout` and `Hub`
//! resources and the manifest loader, [`core`] the pure decision core, [`driver`] which
//! runs the core against a hub, [`resolver`] which turns a `Hub` resource and its secret
//! into a driver for every controller, [`kube`] the Kubernetes controller (`run --kube`),
//! [`run`] the git and directory modes with their state store and HTTP API, [`ops`]
//! the operator commands, [`demo`] which plays all of it in one process in virtual time, and
//! the CLI in [`cli`] and `main.rs`.

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
pub mod resolver;
pub mod resources;
pub mod run;
