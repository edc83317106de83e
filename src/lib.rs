//! ringmaster: declarative phased rollouts of IoT Hub automatic device configurations.
//!
//! Parts (one folder each, as in DESIGN.md): [`hub`] the embedded IoT hub, [`client`] the
//! `Hub` trait and its implementations, [`resources`] the `DeviceRollout` and `Hub`
//! resources and the manifest loader, [`core`] the pure decision core, [`driver`] which
//! runs the core against a hub, sources and the HTTP surface, and the CLI in `main.rs`.

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod core;
pub mod driver;
pub mod hub;
pub mod ops;
pub mod resources;
pub mod run;
pub mod server;
pub mod sources;
pub mod state;
