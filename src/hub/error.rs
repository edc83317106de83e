//! Errors of the embedded hub, named as IoT Hub names them.
//!
//! Every refusal carries the hub's error code name (reference §3.4), the HTTP status a
//! real hub answers with, and a message a person can act on. The REST layer turns a
//! [`HubError`] into IoT Hub's wire shape; in-process callers match on [`ErrorCode`].

use std::fmt;

/// IoT Hub's error code names (the `iothub-errorcode` header / `ErrorCode:` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ArgumentInvalid,
    ArgumentNull,
    InvalidProtocolVersion,
    IotHubUnauthorizedAccess,
    DeviceNotFound,
    DeviceAlreadyExists,
    ConfigurationNotFound,
    ConfigurationAlreadyExists,
    ConfigurationCountLimitExceeded,
    InvalidConfigurationTargetCondition,
    InvalidConfigurationContent,
    InvalidConfigurationCustomMetricsQuery,
    CannotModifyImmutableConfigurationContent,
    PreconditionFailed,
    DeviceModelMaxPropertiesExceeded,
    MessageTooLarge,
    TooManyDevices,
    ThrottlingException,
    IotHubQuotaExceeded,
    BadRequest,
    ServerError,
    ServiceUnavailable,
}

impl ErrorCode {
    /// The HTTP status a real hub answers with for this code.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            ArgumentInvalid
            | ArgumentNull
            | InvalidProtocolVersion
            | InvalidConfigurationTargetCondition
            | InvalidConfigurationContent
            | InvalidConfigurationCustomMetricsQuery
            | CannotModifyImmutableConfigurationContent
            | BadRequest => 400,
            IotHubUnauthorizedAccess => 401,
            // The 32 KB section limit came back as 403 when it was 8 KB (reference §5.3).
            DeviceModelMaxPropertiesExceeded | IotHubQuotaExceeded => 403,
            DeviceNotFound | ConfigurationNotFound => 404,
            DeviceAlreadyExists | ConfigurationAlreadyExists => 409,
            PreconditionFailed => 412,
            // The configuration quota answers 413 (reference §1.11), not 400 or 409.
            ConfigurationCountLimitExceeded | MessageTooLarge | TooManyDevices => 413,
            ThrottlingException => 429,
            ServerError => 500,
            ServiceUnavailable => 503,
        }
    }

    /// The name as it appears on the wire.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            ArgumentInvalid => "ArgumentInvalid",
            ArgumentNull => "ArgumentNull",
            InvalidProtocolVersion => "InvalidProtocolVersion",
            IotHubUnauthorizedAccess => "IotHubUnauthorizedAccess",
            DeviceNotFound => "DeviceNotFound",
            DeviceAlreadyExists => "DeviceAlreadyExists",
            ConfigurationNotFound => "ConfigurationNotFound",
            ConfigurationAlreadyExists => "ConfigurationAlreadyExists",
            ConfigurationCountLimitExceeded => "ConfigurationCountLimitExceeded",
            InvalidConfigurationTargetCondition => "InvalidConfigurationTargetCondition",
            InvalidConfigurationContent => "InvalidConfigurationContent",
            InvalidConfigurationCustomMetricsQuery => "InvalidConfigurationCustomMetricsQuery",
            CannotModifyImmutableConfigurationContent => {
                "CannotModifyImmutableConfigurationContent"
            }
            PreconditionFailed => "PreconditionFailed",
            DeviceModelMaxPropertiesExceeded => "DeviceModelMaxPropertiesExceeded",
            MessageTooLarge => "MessageTooLarge",
            TooManyDevices => "TooManyDevices",
            ThrottlingException => "ThrottlingException",
            IotHubQuotaExceeded => "IotHubQuotaExceeded",
            BadRequest => "BadRequest",
            ServerError => "ServerError",
            ServiceUnavailable => "ServiceUnavailable",
        }
    }

    /// Parses a wire name back into a code (the Azure client reads `iothub-errorcode`).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        use ErrorCode::*;
        const ALL: [ErrorCode; 22] = [
            ArgumentInvalid,
            ArgumentNull,
            InvalidProtocolVersion,
            IotHubUnauthorizedAccess,
            DeviceNotFound,
            DeviceAlreadyExists,
            ConfigurationNotFound,
            ConfigurationAlreadyExists,
            ConfigurationCountLimitExceeded,
            InvalidConfigurationTargetCondition,
            InvalidConfigurationContent,
            InvalidConfigurationCustomMetricsQuery,
            CannotModifyImmutableConfigurationContent,
            PreconditionFailed,
            DeviceModelMaxPropertiesExceeded,
            MessageTooLarge,
            TooManyDevices,
            ThrottlingException,
            IotHubQuotaExceeded,
            BadRequest,
            ServerError,
            ServiceUnavailable,
        ];
        ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(name))
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
        assert_eq!(ErrorCode::ConfigurationCountLimitExceeded.http_status(), 413);
        assert_eq!(ErrorCode::ThrottlingException.http_status(), 429);
        let e = HubError::new(ErrorCode::DeviceNotFound, "no device 'x'");
        assert_eq!(e.to_string(), "DeviceNotFound: no device 'x'");
    }
}
