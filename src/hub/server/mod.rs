//! The embedded hub over HTTP: an Azure IoT Hub compatible REST API (`ringmaster hub serve`).
//!
//! - [`api`]: the routes, one handler per service operation
//!   (<https://learn.microsoft.com/rest/api/iothub/service>), and the
//!   middleware every request passes: SAS auth, api-version, rights, throttle, faults.
//! - [`auth`]: shared access policies and token checks.
//! - [`error`]: IoT Hub's error body and `iothub-errorcode` header.
//! - [`limits`]: throttles shaped like an S1 unit, injected faults and latency.
//! - [`tls`]: certificates (given, or a generated CA and server certificate) and the TLS
//!   listener.
//! - [`serve`]: the `hub serve` command: flags, keys, store, fleet, printing the
//!   connection string.
//!
//! Decisions a client author should know (also in the README's notes):
//! - **If-Match.** `"<etag>"` and `W/"<etag>"` are enforced; `*` and `"*"` are
//!   unconditional. A *bare* etag is enforced too (strict mode, the default), although the
//!   real hub ignores unquoted values: a correct etag passes either way, and only a stale
//!   one differs, where a 412 is the answer that protects data. `--if-match azure` mimics
//!   the real hub and treats a bare etag as `*`.
//! - **PUT** of a configuration or device without If-Match creates it, and answers 409
//!   `ConfigurationAlreadyExists` / `DeviceAlreadyExists` when the id is taken; with
//!   If-Match it updates (404 when missing). Both answer 200.
//! - **Rights.** Twins, queries and configurations need ServiceConnect; device identities
//!   and statistics need RegistryRead to read and RegistryWrite to write.

pub mod api;
pub mod auth;
pub mod error;
pub mod limits;
pub mod serve;
pub mod tls;

pub use api::{ServerOptions, router};
pub use serve::{ServeArgs, run};

/// The `Content-Type` of every JSON answer.
pub const JSON: &str = "application/json; charset=utf-8";

/// The api-versions the server accepts: the SDKs' 2021-04-12, the older 2020-09-30 and the
/// az CLI's 2024-03-31.
pub const API_VERSIONS: [&str; 3] = ["2021-04-12", "2020-09-30", "2024-03-31"];

/// How a bare (unquoted) If-Match etag is treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IfMatchMode {
    /// Enforce it like a quoted one (default).
    #[default]
    Strict,
    /// Ignore it, as Azure IoT Hub does (treat it as `*`).
    Azure,
}
