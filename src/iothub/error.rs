//! Errors of the embedded hub, named as IoT Hub names them.
//!
//! Every refusal carries the hub's error code name (docs/design.md §3.4), the HTTP status a
//! real hub answers with, and a message a person can act on. The REST layer turns a
//! [`HubError`] into IoT Hub's wire shape; in-process callers match on [`ErrorCode`].

use std::fmt;

/// Declares [`ErrorCode`] from one table: each code's wire name is its variant's name, with
/// the HTTP status a real hub answers it with.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $code:ident => $status:literal,)+) => {
        /// IoT Hub's error code names (the `iothub-errorcode` header / `ErrorCode:` prefix).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $code,)+
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$code,)+];

            /// The HTTP status a real hub answers with for this code.
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$code => $status,)+
                }
            }

            /// The name as it appears on the wire.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$code => stringify!($code),)+
                }
            }
        }
    };
}

error_codes! {
    ArgumentInvalid => 400,
    ArgumentNull => 400,
    InvalidProtocolVersion => 400,
    IotHubUnauthorizedAccess => 401,
    DeviceNotFound => 404,
    DeviceAlreadyExists => 409,
    ConfigurationNotFound => 404,
    ConfigurationAlreadyExists => 409,
    /// The configuration quota answers 413 (docs/design.md §1.11), not 400 or 409.
    ConfigurationCountLimitExceeded => 413,
    InvalidConfigurationTargetCondition => 400,
    InvalidConfigurationContent => 400,
    InvalidConfigurationCustomMetricsQuery => 400,
    CannotModifyImmutableConfigurationContent => 400,
    PreconditionFailed => 412,
    /// The 32 KB section limit came back as 403 when it was 8 KB (docs/design.md §5.3).
    DeviceModelMaxPropertiesExceeded => 403,
    MessageTooLarge => 413,
    TooManyDevices => 413,
    ThrottlingException => 429,
    IotHubQuotaExceeded => 403,
    BadRequest => 400,
    ServerError => 500,
    ServiceUnavailable => 503,
}

impl ErrorCode {
    /// Parses a wire name back into a code (the Azure client reads `iothub-errorcode`).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refusal from the hub: an IoT Hub error code and a human message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HubError {
    pub code: ErrorCode,
    pub message: String,
}

impl HubError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HubError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ArgumentInvalid, message)
    }
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

/// Result alias for hub operations.
pub type Result<T, E = HubError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_statuses_follow_the_reference() {
        for code in [
            ErrorCode::PreconditionFailed,
            ErrorCode::ConfigurationCountLimitExceeded,
            ErrorCode::DeviceNotFound,
        ] {
            assert_eq!(ErrorCode::from_name(code.name()), Some(code));
        }
        assert_eq!(ErrorCode::PreconditionFailed.http_status(), 412);
        assert_eq!(
            ErrorCode::ConfigurationCountLimitExceeded.http_status(),
            413
        );
        assert_eq!(ErrorCode::ThrottlingException.http_status(), 429);
        let e = HubError::new(ErrorCode::DeviceNotFound, "no device 'x'");
        assert_eq!(e.to_string(), "DeviceNotFound: no device 'x'");
    }
}
