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
    /// A field or argument has a value the hub does not accept.
    ArgumentInvalid => 400,
    /// A required field or argument is missing or empty.
    ArgumentNull => 400,
    /// The `api-version` query parameter is missing or not supported.
    InvalidProtocolVersion => 400,
    /// The SAS token is missing, malformed, expired or lacks the needed permission.
    IotHubUnauthorizedAccess => 401,
    /// No device (or twin) has the given id.
    DeviceNotFound => 404,
    /// A device with the given id already exists.
    DeviceAlreadyExists => 409,
    /// No configuration has the given id.
    ConfigurationNotFound => 404,
    /// A configuration with the given id already exists.
    ConfigurationAlreadyExists => 409,
    /// The configuration quota answers 413 (docs/design.md §1.11), not 400 or 409.
    ConfigurationCountLimitExceeded => 413,
    /// The configuration's `targetCondition` does not parse as a query condition.
    InvalidConfigurationTargetCondition => 400,
    /// The configuration's `content` is missing or not valid.
    InvalidConfigurationContent => 400,
    /// A custom metric query does not parse or there are too many of them.
    InvalidConfigurationCustomMetricsQuery => 400,
    /// An update tried to change a configuration's content (docs/design.md §1.6).
    CannotModifyImmutableConfigurationContent => 400,
    /// The `If-Match` etag does not match the current one (docs/design.md §3.3).
    PreconditionFailed => 412,
    /// The 32 KB section limit came back as 403 when it was 8 KB (docs/design.md §5.3).
    DeviceModelMaxPropertiesExceeded => 403,
    /// The request body is larger than the hub accepts.
    MessageTooLarge => 413,
    /// A bulk registry call names more devices than allowed.
    TooManyDevices => 413,
    /// A rate limit was hit; retry later (docs/design.md §3.5).
    ThrottlingException => 429,
    /// The hub's daily quota is used up.
    IotHubQuotaExceeded => 403,
    /// The request is malformed in a way no more specific code covers, such as a bad query.
    BadRequest => 400,
    /// The hub failed on its side.
    ServerError => 500,
    /// The hub cannot take the request now; retry later.
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
    /// The IoT Hub error code; decides the HTTP status.
    pub code: ErrorCode,
    /// What went wrong and what would be valid, for a person; never holds a secret.
    pub message: String,
}

impl HubError {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HubError {
            code,
            message: message.into(),
        }
    }
    /// An [`ErrorCode::ArgumentInvalid`] error (HTTP 400) with the given message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ArgumentInvalid, message)
    }
    /// The HTTP status a real hub answers this error with.
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
