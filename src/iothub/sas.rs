//! Shared access signatures and service connection strings (docs/design.md §4).
//!
//! Both sides of SAS live here so that they cannot drift apart: the Azure client makes
//! tokens with [`SasKey::token`], and `ringmaster hub serve` checks them with
//! [`SasToken::parse`] and [`SasKey::verify`].
//!
//! Secrets never leave this module by accident: [`SasKey`] and [`ConnectionString`] print
//! `***` in their `Debug` output, parse errors name the field that is wrong but never echo
//! its value, and the only way to see a key again is the explicit
//! [`ConnectionString::expose`].

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = hmac::Hmac<Sha256>;

/// What [`encode`] escapes: everything but RFC 3986's unreserved characters, so `:` in
/// `host:port` becomes `%3A` as Python's `quote_plus` makes it, and `+ / =` in a signature
/// are escaped too.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one component of a SAS token.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Percent-decodes one component (`+` stays `+`: signatures are base64).
pub fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Errors reading a connection string or a key. They never contain a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// A required part is missing: its name (`HostName`, `SharedAccessKeyName`, …).
    #[error(
        "the connection string has no {0}; a service connection string looks like HostName=<hub>.azure-devices.net;SharedAccessKeyName=<policy>;SharedAccessKey=<base64 key>"
    )]
    Missing(&'static str),
    /// A part has no `=`: its 1-based position.
    #[error("the connection string's part number {0} is not of the form Name=value")]
    Malformed(usize),
    /// A part with a plausible name that is not a known one: the name.
    #[error(
        "the connection string has an unknown part '{0}'; known parts are HostName, SharedAccessKeyName, SharedAccessKey, SharedAccessSignature, DeviceId, ModuleId, GatewayHostName"
    )]
    UnknownPart(String),
    /// An unknown part whose name does not look like one (a pasted key, say): not echoed.
    #[error(
        "the connection string's part number {0} is not a known Name=value part; known parts are HostName, SharedAccessKeyName, SharedAccessKey, SharedAccessSignature, DeviceId, ModuleId, GatewayHostName"
    )]
    UnknownPartAt(usize),
    /// A device connection string (it has `DeviceId`), not a service one.
    #[error(
        "the connection string is for a device (it has DeviceId); ringmaster needs a service connection string with SharedAccessKeyName"
    )]
    DeviceConnectionString,
    /// The shared access key is not valid base64.
    #[error("the shared access key is not valid base64")]
    BadKey,
}

/// The latest expiry a token may name: the last second of the year 9999 (Unix seconds).
/// Anything later is nonsense, not a long-lived token.
pub const MAX_EXPIRY: i64 = 253_402_300_799;

/// Why a token's expiry (`se`) is refused. The arithmetic behind it is checked: no value
/// of `se` or of the clock overflows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    /// `se` is not an integer.
    #[error("the token's expiry (se) is not a number of seconds since 1970")]
    NotANumber,
    /// `se` is outside `1..=MAX_EXPIRY`: the value.
    #[error(
        "the token's expiry (se) {0} is out of range; give Unix seconds between 1 and {MAX_EXPIRY}"
    )]
    OutOfRange(i64),
    /// The token expired: how many seconds ago.
    #[error("the token expired {0} second{s} ago; create a new one", s = if *.0 == 1 { "" } else { "s" })]
    Expired(u64),
}

/// The expiry of a token made at `now` (Unix seconds) to live `ttl`: saturates at
/// [`MAX_EXPIRY`] instead of overflowing, whatever the clock and the TTL say.
pub fn expiry_after(now: i64, ttl: std::time::Duration) -> i64 {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    now.saturating_add(ttl).clamp(1, MAX_EXPIRY)
}

/// A shared access key, decoded. Its `Debug` shows no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct SasKey {
    bytes: Vec<u8>,
    text: String,
}

impl fmt::Debug for SasKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SasKey(***)")
    }
}

impl SasKey {
    /// Reads a base64 key as IoT Hub shows it.
    pub fn from_base64(text: &str) -> Result<SasKey, SasError> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| SasError::BadKey)?;
        if bytes.is_empty() {
            return Err(SasError::BadKey);
        }
        Ok(SasKey {
            bytes,
            text: text.to_string(),
        })
    }

    /// A new random 32-byte key, as the hub generates for its policies.
    pub fn generate() -> SasKey {
        let bytes: [u8; 32] = rand::random();
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        SasKey {
            bytes: bytes.to_vec(),
            text,
        }
    }

    /// The key in base64, as it goes into a connection string. Handle with care.
    pub fn expose(&self) -> &str {
        &self.text
    }

    fn mac(&self, sr: &str, se: &str) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.bytes).expect("HMAC takes keys of any length");
        mac.update(sr.as_bytes());
        mac.update(b"\n");
        mac.update(se.as_bytes());
        mac
    }

    /// The base64 signature of `sr` (exactly as it will appear in the token) and `se`.
    pub fn sign(&self, sr: &str, se: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.mac(sr, se).finalize().into_bytes())
    }

    /// A service token for `resource` (the hub host name), valid until `expiry` (Unix
    /// seconds), signed with the policy `policy`'s key.
    pub fn token(&self, resource: &str, policy: &str, expiry: i64) -> String {
        let sr = encode(resource);
        let se = expiry.to_string();
        let sig = encode(&self.sign(&sr, &se));
        format!(
            "SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={}",
            encode(policy)
        )
    }

    /// True when the token was signed with this key. Real clients differ in how they
    /// encode `sr` (docs/design.md §4): the HMAC is checked over `sr` exactly as sent
    /// first, then over its decoded form and over the canonical lowercase encoding. The
    /// comparison is constant-time.
    pub fn verify(&self, token: &SasToken<'_>) -> bool {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(decode(token.sig)) else {
            return false;
        };
        let decoded = decode(token.sr);
        let canonical = encode(&decoded.to_lowercase());
        [token.sr, decoded.as_str(), canonical.as_str()]
            .iter()
            .any(|sr| self.mac(sr, token.se).verify_slice(&sig).is_ok())
    }
}

/// The fields of a `SharedAccessSignature ...` token, borrowed from the header, still
/// encoded as they were sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SasToken<'a> {
    /// The resource URI the token grants access to (percent-encoded).
    pub sr: &'a str,
    /// The base64 HMAC-SHA256 signature (percent-encoded).
    pub sig: &'a str,
    /// The expiry, in Unix seconds (unchecked text).
    pub se: &'a str,
    /// The shared access policy name; `None` for device-scoped tokens.
    pub skn: Option<&'a str>,
}

impl<'a> SasToken<'a> {
    /// Parses an `Authorization` value. Fields may come in any order; unknown fields are
    /// ignored; `sr`, `sig` and `se` are required.
    pub fn parse(header: &'a str) -> Option<SasToken<'a>> {
        let h = header.trim();
        let (scheme, rest) = h.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("SharedAccessSignature") {
            return None;
        }
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for part in rest.trim().split('&') {
            let (k, v) = part.split_once('=')?;
            match k.trim() {
                "sr" => sr = Some(v),
                "sig" => sig = Some(v),
                "se" => se = Some(v),
                "skn" => skn = Some(v),
                _ => {}
            }
        }
        Some(SasToken {
            sr: sr?,
            sig: sig?,
            se: se?,
            skn,
        })
    }

    /// The expiry in Unix seconds, if it is a number.
    pub fn expiry(&self) -> Option<i64> {
        self.se.trim().parse().ok()
    }

    /// Checks the expiry at `now` (Unix seconds): a number in `1..=MAX_EXPIRY` and not in
    /// the past. Every value of `se` and `now` gives an answer; none overflows.
    pub fn check_expiry(&self, now: i64) -> Result<(), ExpiryError> {
        let expiry = self.expiry().ok_or(ExpiryError::NotANumber)?;
        if !(1..=MAX_EXPIRY).contains(&expiry) {
            return Err(ExpiryError::OutOfRange(expiry));
        }
        if expiry < now {
            // Both sides fit in i128 whatever they are.
            let ago = (now as i128 - expiry as i128).clamp(0, u64::MAX as i128) as u64;
            return Err(ExpiryError::Expired(ago));
        }
        Ok(())
    }

    /// The resource, decoded.
    pub fn resource(&self) -> String {
        decode(self.sr)
    }
}

/// A service connection string: `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`.
/// Its `Debug` output hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `HostName`: the hub's host, e.g. `myhub.azure-devices.net`.
    pub host_name: String,
    /// `SharedAccessKeyName`: the shared access policy, e.g. `iothubowner`.
    pub key_name: String,
    /// `SharedAccessKey`, decoded.
    pub key: SasKey,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .field("key", &"***")
            .finish()
    }
}

impl ConnectionString {
    /// Parses a service connection string: parts split on `;`, each on its first `=` (as
    /// the Python SDK does), names case-sensitive.
    pub fn parse(text: &str) -> Result<ConnectionString, SasError> {
        let (mut host, mut name, mut key) = (None, None, None);
        for (i, part) in text.trim().split(';').enumerate() {
            if part.trim().is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').ok_or(SasError::Malformed(i + 1))?;
            match k.trim() {
                "HostName" => host = Some(v.trim().to_string()),
                "SharedAccessKeyName" => name = Some(v.trim().to_string()),
                "SharedAccessKey" => key = Some(v),
                "DeviceId" | "ModuleId" => return Err(SasError::DeviceConnectionString),
                "SharedAccessSignature" | "GatewayHostName" => {}
                // Echo a name only if it looks like one: a bare key pasted in front of a
                // `=` (base64 ends in `=`) would otherwise show up in the message.
                other
                    if (1..=32).contains(&other.len())
                        && other.bytes().all(|b| b.is_ascii_alphabetic()) =>
                {
                    return Err(SasError::UnknownPart(other.to_string()));
                }
                _ => return Err(SasError::UnknownPartAt(i + 1)),
            }
        }
        let host_name = host
            .filter(|h| !h.is_empty())
            .ok_or(SasError::Missing("HostName"))?;
        let key_name = name
            .filter(|n| !n.is_empty())
            .ok_or(SasError::Missing("SharedAccessKeyName"))?;
        let key = SasKey::from_base64(key.ok_or(SasError::Missing("SharedAccessKey"))?)?;
        Ok(ConnectionString {
            host_name,
            key_name,
            key,
        })
    }

    /// The connection string as text, key included: for the user's own terminal only.
    pub fn expose(&self) -> String {
        format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name,
            self.key_name,
            self.key.expose()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY=";

    #[test]
    fn connection_strings_parse_and_never_show_the_key() {
        let cs = ConnectionString::parse(&format!(
            "HostName=hub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(cs.host_name, "hub.azure-devices.net");
        assert_eq!(cs.key_name, "iothubowner");
        let dbg = format!("{cs:?} {:?}", cs.key);
        assert!(!dbg.contains(KEY) && !dbg.contains("c2VjcmV0"), "{dbg}");
        assert!(cs.expose().ends_with(KEY));

        let e =
            ConnectionString::parse("HostName=h;SharedAccessKeyName=p;SharedAccessKey=not*base64")
                .unwrap_err();
        assert_eq!(e, SasError::BadKey);
        assert!(!e.to_string().contains("not*base64"));
        let e = ConnectionString::parse(&format!("HostName=h;SharedAccessKey={KEY}")).unwrap_err();
        assert_eq!(e, SasError::Missing("SharedAccessKeyName"));
        let e = ConnectionString::parse(&format!("HostName=h;Junk{KEY}")).unwrap_err();
        assert!(!e.to_string().contains(KEY), "{e}");
        // A bare key (ending in `=`) pasted where a part belongs: named by position only.
        let e = ConnectionString::parse(&format!("{KEY};HostName=h")).unwrap_err();
        assert_eq!(e, SasError::UnknownPartAt(1));
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        let e =
            ConnectionString::parse(&format!("HostName=h;Endpoint=sb://x;SharedAccessKey={KEY}"))
                .unwrap_err();
        assert_eq!(e, SasError::UnknownPart("Endpoint".into()));
        assert!(matches!(
            ConnectionString::parse(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}")),
            Err(SasError::DeviceConnectionString)
        ));
    }

    #[test]
    fn expiries_are_checked_without_overflow() {
        let tok = |se: &'static str| SasToken {
            sr: "h",
            sig: "s",
            se,
            skn: None,
        };
        use ExpiryError::*;
        assert_eq!(tok("2000").check_expiry(1000), Ok(()));
        assert_eq!(tok("2000").check_expiry(2000), Ok(()));
        assert_eq!(tok("2000").check_expiry(2001), Err(Expired(1)));
        assert_eq!(
            tok("1").check_expiry(i64::MAX),
            Err(Expired(i64::MAX as u64 - 1))
        );
        assert_eq!(tok("1").check_expiry(i64::MIN), Ok(()));
        for (se, want) in [
            ("-9223372036854775808", OutOfRange(i64::MIN)),
            ("9223372036854775807", OutOfRange(i64::MAX)),
            ("0", OutOfRange(0)),
            ("-1", OutOfRange(-1)),
            ("253402300800", OutOfRange(MAX_EXPIRY + 1)),
            ("9223372036854775808", NotANumber),
            ("-9223372036854775809", NotANumber),
            ("1e9", NotANumber),
            ("", NotANumber),
        ] {
            for now in [i64::MIN, -1, 0, 1000, i64::MAX] {
                assert_eq!(
                    tok(se).check_expiry(now),
                    Err(want.clone()),
                    "{se} at {now}"
                );
            }
        }
        assert!(Expired(1).to_string().contains("1 second ago"));
        assert_eq!(expiry_after(1000, std::time::Duration::from_secs(60)), 1060);
        assert_eq!(
            expiry_after(i64::MAX, std::time::Duration::from_secs(60)),
            MAX_EXPIRY
        );
        assert_eq!(expiry_after(1000, std::time::Duration::MAX), MAX_EXPIRY);
        assert_eq!(expiry_after(i64::MIN, std::time::Duration::ZERO), 1);
    }

    #[test]
    fn tokens_round_trip_and_tolerate_client_encodings() {
        let key = SasKey::from_base64(KEY).unwrap();
        let t = key.token("localhost:8443", "iothubowner", 2_000_000_000);
        assert!(
            t.starts_with("SharedAccessSignature sr=localhost%3A8443&sig="),
            "{t}"
        );
        let p = SasToken::parse(&t).unwrap();
        assert_eq!(p.skn, Some("iothubowner"));
        assert_eq!(p.resource(), "localhost:8443");
        assert!(key.verify(&p));

        // Raw `sr`, signed raw, fields in another order, `sig` with `/` left unescaped.
        let sig = key.sign("localhost:8443", "2000000000");
        let raw = format!(
            "SharedAccessSignature sr=localhost:8443&sig={}&skn=x&se=2000000000",
            sig.replace('+', "%2B").replace('=', "%3D")
        );
        assert!(key.verify(&SasToken::parse(&raw).unwrap()));

        // Lowercase hex escapes, signed as sent.
        let sr = "localhost%3a8443";
        let sig = encode(&key.sign(sr, "2000000000"));
        let lc = format!("SharedAccessSignature sr={sr}&sig={sig}&se=2000000000&skn=x");
        assert!(key.verify(&SasToken::parse(&lc).unwrap()));

        // Tampering with any field breaks the signature.
        let tampered = t.replace("se=2000000000", "se=2000000001");
        assert!(!key.verify(&SasToken::parse(&tampered).unwrap()));
        let other = SasKey::generate();
        assert!(!other.verify(&p));
        assert!(SasToken::parse("Bearer abc").is_none());
        assert!(SasToken::parse("SharedAccessSignature sr=a&se=1").is_none());
    }
}
