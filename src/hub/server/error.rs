//! Error responses in IoT Hub's wire shape (docs/design.md §3.4).
//!
//! Every refusal is a JSON body
//! `{"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:<id>-G:0-TimeStamp:<MM/dd/yyyy HH:mm:ss>"}`
//! plus an `iothub-errorcode: <Name>` header: the .NET, Node and Python SDKs pick their
//! error classes from one or the other.

use crate::iothub::error::{ErrorCode, HubError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

/// An error answer: status, IoT Hub error name and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// The IoT Hub error name (`iothub-errorcode` header, `ErrorCode:` in `Message`).
    pub name: Cow<'static, str>,
    /// The text for people after `ErrorCode:<name>;` in the body's `Message`.
    pub message: String,
}

impl ApiError {
    /// An error with one of the hub's codes and the status that code has.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            name: Cow::Borrowed(code.name()),
            message: message.into(),
        }
    }

    /// An error with a name outside [`ErrorCode`] (unknown routes, wrong methods).
    pub fn other(status: StatusCode, name: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            name: Cow::Borrowed(name),
            message: message.into(),
        }
    }

    /// 401 `IotHubUnauthorizedAccess`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(ErrorCode::IotHubUnauthorizedAccess, message)
    }

    /// 400 `ArgumentInvalid`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        Self::new(ErrorCode::ArgumentInvalid, message)
    }

    /// 500 `ServerError`.
    pub fn server(message: impl Into<String>) -> ApiError {
        Self::new(ErrorCode::ServerError, message)
    }

    /// The JSON body, with a fresh tracking id and the current time.
    pub fn body(&self) -> serde_json::Value {
        let tracking: u128 = rand::random();
        let ts = jiff::Timestamp::now().strftime("%m/%d/%Y %H:%M:%S");
        serde_json::json!({
            "Message": format!("ErrorCode:{};{}", self.name, self.message),
            "ExceptionMessage": format!("Tracking ID:{tracking:032x}-G:0-TimeStamp:{ts}"),
        })
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        ApiError::new(e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(super::JSON));
        if let Ok(v) = HeaderValue::from_str(&self.name) {
            h.insert("iothub-errorcode", v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_hub_shape() {
        let e = ApiError::from(HubError::new(
            ErrorCode::DeviceNotFound,
            "Device d1 not registered",
        ));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let b = e.body();
        assert_eq!(
            b["Message"],
            "ErrorCode:DeviceNotFound;Device d1 not registered"
        );
        let ex = b["ExceptionMessage"].as_str().unwrap();
        assert!(
            ex.starts_with("Tracking ID:") && ex.contains("-G:0-TimeStamp:"),
            "{ex}"
        );
        // MM/dd/yyyy HH:mm:ss
        let ts = ex.split("TimeStamp:").nth(1).unwrap();
        assert_eq!(ts.len(), 19, "{ts}");
        assert_eq!(&ts[2..3], "/");
        let resp = e.into_response();
        assert_eq!(resp.headers()["iothub-errorcode"], "DeviceNotFound");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
}
