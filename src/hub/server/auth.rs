//! SAS authentication for the served hub (docs/design.md §4).
//!
//! The hub has IoT Hub's default shared access policies, each with its own key and rights:
//! `iothubowner` (everything), `service` (ServiceConnect), `registryRead` (RegistryRead),
//! `registryReadWrite` (RegistryRead + RegistryWrite), and `device` (DeviceConnect, which
//! no REST operation here accepts). Keys are generated on first start and kept in the
//! store, so connection strings survive restarts.
//!
//! Verification is tolerant of how real clients encode tokens (see
//! [`crate::iothub::sas::SasKey::verify`]) and strict about everything else: an expired,
//! tampered, unknown-policy or insufficient-rights token is 401 `IotHubUnauthorizedAccess`,
//! like the real hub. Messages say which check failed but never echo a token.

use super::error::ApiError;
use crate::iothub::sas::{SasKey, SasToken};
use std::fmt;

/// A set of access rights.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    /// No rights.
    pub const NONE: Rights = Rights(0);
    /// RegistryRead: read device identities and statistics.
    pub const REGISTRY_READ: Rights = Rights(1);
    /// RegistryWrite: create, update and delete device identities.
    pub const REGISTRY_WRITE: Rights = Rights(2);
    /// ServiceConnect: twins, queries and configurations.
    pub const SERVICE_CONNECT: Rights = Rights(4);
    /// DeviceConnect: device-facing endpoints (no REST operation here accepts it).
    pub const DEVICE_CONNECT: Rights = Rights(8);
    /// Every right (the `iothubowner` policy).
    pub const ALL: Rights = Rights(15);

    /// The rights in either set.
    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
    /// True when every right in `other` is also in `self`.
    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
    /// True when the two sets share a right.
    pub fn intersects(self, other: Rights) -> bool {
        self.0 & other.0 != 0
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (Rights::REGISTRY_READ, "RegistryRead"),
            (Rights::REGISTRY_WRITE, "RegistryWrite"),
            (Rights::SERVICE_CONNECT, "ServiceConnect"),
            (Rights::DEVICE_CONNECT, "DeviceConnect"),
        ]
        .into_iter()
        .filter(|(r, _)| self.contains(*r))
        .map(|(_, n)| n)
        .collect();
        write!(
            f,
            "{}",
            if names.is_empty() {
                "none".into()
            } else {
                names.join("+")
            }
        )
    }
}

/// One shared access policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The policy name a token's `skn` must give (e.g. `iothubowner`).
    pub name: String,
    /// The key tokens for this policy are signed with.
    pub key: SasKey,
    /// What a token for this policy may do.
    pub rights: Rights,
}

/// The default policies: name and rights.
pub const DEFAULT_POLICIES: [(&str, Rights); 5] = [
    ("iothubowner", Rights::ALL),
    ("service", Rights::SERVICE_CONNECT),
    ("device", Rights::DEVICE_CONNECT),
    ("registryRead", Rights::REGISTRY_READ),
    (
        "registryReadWrite",
        Rights::REGISTRY_READ.union(Rights::REGISTRY_WRITE),
    ),
];

/// The hub's policies and the host name tokens must be issued for.
#[derive(Clone, Debug)]
pub struct Authenticator {
    host_name: String,
    policies: Vec<Policy>,
}

impl Authenticator {
    /// Checks tokens issued for `host_name` (compared without case, trailing `/` ignored)
    /// against `policies`.
    pub fn new(host_name: &str, policies: Vec<Policy>) -> Authenticator {
        Authenticator {
            host_name: host_name.trim().trim_end_matches('/').to_ascii_lowercase(),
            policies,
        }
    }

    /// The policies with their keys.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policy called `name`, an exact match first, else one differing only in case.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name).or_else(|| {
            self.policies
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name))
        })
    }

    /// True when the decoded `sr` names this hub: the host name compared without case,
    /// with or without the port (`localhost:8443`, `localhost%3A8443`, `localhost`).
    fn audience_ok(&self, resource: &str) -> bool {
        let r = resource.trim().trim_end_matches('/').to_ascii_lowercase();
        let r = r
            .strip_prefix("https://")
            .or_else(|| r.strip_prefix("http://"))
            .unwrap_or(&r);
        let bare = |h: &str| {
            h.rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_else(|| h.to_string())
        };
        r == self.host_name || bare(r) == bare(&self.host_name)
    }

    /// Checks an `Authorization` header at `now` (Unix seconds) and returns the policy's
    /// rights.
    pub fn check(&self, header: Option<&str>, now: i64) -> Result<&Policy, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::unauthorized(
                "the request has no Authorization header; send a SharedAccessSignature token",
            )
        })?;
        let token = SasToken::parse(header).ok_or_else(|| {
            ApiError::unauthorized(
                "the Authorization header is not a SharedAccessSignature token with sr, sig and se",
            )
        })?;
        let skn = token.skn.ok_or_else(|| {
            ApiError::unauthorized(
                "the token names no policy (skn); service calls need a shared access policy token",
            )
        })?;
        let policy = self
            .policy(&crate::iothub::sas::decode(skn))
            .ok_or_else(|| {
                ApiError::unauthorized("the token's policy (skn) is not a policy of this hub")
            })?;
        token
            .check_expiry(now)
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        if !policy.key.verify(&token) {
            return Err(ApiError::unauthorized(
                "the token's signature does not match the policy's key",
            ));
        }
        if !self.audience_ok(&token.resource()) {
            return Err(ApiError::unauthorized(format!(
                "the token was issued for another resource; its sr must be this hub's host name '{}'",
                self.host_name
            )));
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iothub::sas::encode;

    fn auth() -> (Authenticator, SasKey, SasKey) {
        let owner = SasKey::generate();
        let read = SasKey::generate();
        let a = Authenticator::new(
            "localhost:8443",
            vec![
                Policy {
                    name: "iothubowner".into(),
                    key: owner.clone(),
                    rights: Rights::ALL,
                },
                Policy {
                    name: "registryRead".into(),
                    key: read.clone(),
                    rights: Rights::REGISTRY_READ,
                },
            ],
        );
        (a, owner, read)
    }

    #[test]
    fn good_tokens_pass_in_every_encoding_of_the_host() {
        let (a, owner, _) = auth();
        for host in ["localhost:8443", "LOCALHOST:8443", "localhost"] {
            let t = owner.token(host, "iothubowner", 2000);
            let p = a
                .check(Some(&t), 1000)
                .unwrap_or_else(|e| panic!("{host}: {e:?}"));
            assert_eq!(p.name, "iothubowner");
        }
        let t = owner.token("localhost:8443", "IoTHubOwner", 2000);
        assert!(a.check(Some(&t), 1000).is_ok());
    }

    /// What the fuzzer found (fuzz/regressions/sas/): an expiry near `i64::MIN` overflowed
    /// the expiry arithmetic and panicked; it is a plain 401.
    #[test]
    fn expiries_near_the_smallest_integer_are_unauthorized_not_a_panic() {
        let (a, owner, _) = auth();
        let raw = "sharedaccesssignature se=-9223372036854775808&sr=h&sig=x&skn=iothubowner";
        assert_eq!(a.check(Some(raw), 1000).unwrap_err().status.as_u16(), 401);
        for se in [i64::MIN, -9223372036854705808, i64::MIN + 1, -1, 0] {
            let t = owner.token("localhost:8443", "iothubowner", se);
            assert_eq!(
                a.check(Some(&t), 1000).unwrap_err().status.as_u16(),
                401,
                "se={se}"
            );
            assert_eq!(
                a.check(Some(&t), i64::MAX).unwrap_err().status.as_u16(),
                401,
                "se={se}"
            );
        }
    }

    #[test]
    fn bad_tokens_are_unauthorized() {
        let (a, owner, read) = auth();
        let cases = [
            (None, "no Authorization"),
            (Some("Bearer x".to_string()), "not a SharedAccessSignature"),
            (
                Some(owner.token("localhost:8443", "iothubowner", 999)),
                "expired",
            ),
            (
                Some(owner.token("localhost:8443", "nobody", 2000)),
                "not a policy",
            ),
            (
                Some(read.token("localhost:8443", "iothubowner", 2000)),
                "signature",
            ),
            (
                Some(owner.token("otherhub.azure-devices.net", "iothubowner", 2000)),
                "another resource",
            ),
            (
                Some(
                    owner
                        .token("localhost:8443", "iothubowner", 2000)
                        .replace("se=2000", "se=3000"),
                ),
                "signature",
            ),
        ];
        for (h, want) in cases {
            let e = a.check(h.as_deref(), 1000).unwrap_err();
            assert_eq!(e.status, 401, "{h:?}");
            assert_eq!(e.name, "IotHubUnauthorizedAccess");
            assert!(e.message.contains(want), "{h:?}: {}", e.message);
            if let Some(sig) = h.as_deref().and_then(SasToken::parse).map(|t| t.sig) {
                assert!(!e.message.contains(sig));
            }
        }
    }

    #[test]
    fn nonsense_expiries_are_unauthorized_and_never_overflow() {
        let (a, owner, _) = auth();
        let host = "localhost:8443";
        // Signed with the right key, so only the expiry is wrong.
        for (se, now, want) in [
            (i64::MIN, 1000, "expiry"),
            (i64::MIN, i64::MAX, "expiry"),
            (i64::MIN + 1, 0, "expiry"),
            (-1, 1000, "expiry"),
            (0, 1000, "expiry"),
            (i64::MAX, 1000, "expiry"),
            (i64::MAX, i64::MIN, "expiry"),
            (999, i64::MAX, "expired"),
            (999, 1000, "expired 1 second"),
        ] {
            let t = owner.token(host, "iothubowner", se);
            let e = a.check(Some(&t), now).unwrap_err();
            assert_eq!(e.status, 401, "se={se} now={now}");
            assert!(e.message.contains(want), "se={se} now={now}: {}", e.message);
        }
        // An expiry that is not an i64 at all, or not a number.
        for se in [
            "99999999999999999999",
            "-99999999999999999999",
            "1e9",
            "",
            "0x10",
        ] {
            let sig = encode(&owner.sign(&encode(host), se));
            let t = format!(
                "SharedAccessSignature sr={}&sig={sig}&se={se}&skn=iothubowner",
                encode(host)
            );
            let e = a.check(Some(&t), 1000).unwrap_err();
            assert_eq!(e.status, 401, "se={se}");
        }
        // A clock at either end of the range still reads a good token without overflow.
        let t = owner.token(host, "iothubowner", 2000);
        assert!(a.check(Some(&t), i64::MIN).is_ok());
        assert!(a.check(Some(&t), 1999).is_ok());
        assert!(a.check(Some(&t), i64::MAX).is_err());
    }

    #[test]
    fn rights_compose() {
        let rw = Rights::REGISTRY_READ.union(Rights::REGISTRY_WRITE);
        assert!(rw.contains(Rights::REGISTRY_READ));
        assert!(!rw.contains(Rights::SERVICE_CONNECT));
        assert!(Rights::ALL.contains(rw));
        assert_eq!(format!("{rw:?}"), "RegistryRead+RegistryWrite");
    }
}
