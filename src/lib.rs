//! ringmaster: declarative phased rollouts of IoT Hub automatic device configurations.
//!
//! The parts, lowest layer first (docs/design.md, "Layers"; `scripts/check-layers` keeps
//! every import pointing down):
//! - [`clock`], [`duration`], [`files`] (private files), [`net`] (bounded listeners),
//!   [`budget`] (token buckets): utilities.
//! - [`iothub`]: what IoT Hub is (configurations, twins, errors, query language, SAS).
//! - [`resources`]: the `DeviceRollout` and `Hub` resources and operator requests.
//! - [`hub`]: the embedded IoT hub, its REST server and its bench; [`core`]: the pure
//!   decision core.
//! - [`client`]: the `Hub` trait and its implementations; [`manifest`]: the YAML loader.
//! - [`driver`]: runs the core against a hub; [`metrics`]: the Prometheus series.
//! - [`resolver`]: a `Hub` resource and its secret → a driver, for every controller.
//! - [`run`] (directory and git), [`kube`] (Kubernetes) and [`demo`]: the controllers.
//! - [`cli`] and [`ops`]: the commands, dispatched by `main.rs`.

pub mod budget;
pub mod cli;
pub mod client;
pub mod clock;
pub mod console;
pub mod core;
pub mod demo;
pub mod driver;
pub mod duration;
pub mod files;
pub mod hub;
pub mod iothub;
pub mod kube;
pub mod manifest;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod resolver;
pub mod resources;
pub mod run;
