//! What Azure IoT Hub *is*, with no I/O: the model every other part points at.
//!
//! - [`configuration`]: automatic device configurations, their ids and limits.
//! - [`device`] and [`twin`]: device identities and twins as documents, with IoT Hub's
//!   limits; [`path`] and [`value`] are the flat, interned form a query evaluates.
//! - [`query`]: the IoT Hub query language (lexer, parser, evaluator, aggregates).
//! - [`error`]: IoT Hub's error codes, their wire names and HTTP statuses.
//! - [`page`]: a query page and a query test's answer.
//! - [`sas`]: SAS tokens and connection strings.
//! - [`throttle`]: the throttle classes, S1's rates, a token bucket per class.
//!
//! The embedded hub ([`crate::hub`]), the client ([`crate::client`]), the resources and the
//! decision core all use these types; nothing here imports them back.

pub mod configuration;
pub mod device;
pub mod error;
pub mod page;
pub mod path;
pub mod query;
pub mod sas;
pub mod throttle;
pub mod twin;
pub mod value;

pub use error::{ErrorCode, HubError};
pub use page::{QueryPage, TestQueriesResult};
