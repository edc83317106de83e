//! Sign-in and the right to act, decided by a Kubernetes cluster: a person signs in with
//! their own bearer token, which the API server's `TokenReview` names
//! (https://kubernetes.io/docs/reference/access-authn-authz/authentication/#webhook-token-authentication),
//! and each action is allowed only if `SubjectAccessReview` says that person may `patch`
//! that `DeviceRollout`
//! (https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access),
//! so the cluster's RBAC decides who may promote, and each request is recorded under the
//! person's name. For a [`super::Backend`] of the Kubernetes controller (its
//! `sign_in` and `may_act`); the controller's own service account needs `create` on
//! `tokenreviews` and `subjectaccessreviews`.

use super::Person;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// The resource an action patches.
pub const GROUP: &str = "ringmaster.dev";
/// Its plural name.
pub const RESOURCE: &str = "devicerollouts";
/// The verb an action needs (the request is an annotation patch).
pub const VERB: &str = "patch";

/// Asks the API server who a token is, and what they may do.
#[derive(Clone)]
pub struct KubeAuth {
    client: kube::Client,
}

impl KubeAuth {
    /// Over a client with the rights to create TokenReviews and SubjectAccessReviews.
    pub fn new(client: kube::Client) -> KubeAuth {
        KubeAuth { client }
    }

    /// The person a bearer token authenticates; `Ok(None)` when the API server does not
    /// accept it. The token is sent to the API server only, never kept or logged.
    pub async fn sign_in(&self, token: &str) -> Result<Option<Person>, String> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.trim().to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let got = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview: {e}"))?;
        let Some(status) = got.status else {
            return Ok(None);
        };
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(user.username.filter(|n| !n.is_empty()).map(|name| Person {
            name,
            groups: user.groups.unwrap_or_default(),
        }))
    }

    /// Whether `who` may `patch` DeviceRollout `namespace/name`.
    pub async fn may_patch(
        &self,
        who: &Person,
        namespace: &str,
        name: &str,
    ) -> Result<bool, String> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.name.clone()),
                groups: Some(who.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    verb: Some(VERB.into()),
                    namespace: Some(namespace.into()),
                    name: Some(name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let got = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("SubjectAccessReview: {e}"))?;
        Ok(got.status.is_some_and(|s| s.allowed))
    }
}
