//! ringmaster: declarative phased rollouts of IoT Hub automatic device configurations.
//!
//! Parts (one folder each, as in DESIGN.md): [`hub`] the embedded IoT hub, [`client`] the
//! `Hub` trait and its implementations, `core` the pure decision core, sources and the
//! HTTP surface, and the CLI in `main.rs`.

pub mod bench;
pub mod client;
pub mod clock;
pub mod hub;
pub mod server;
