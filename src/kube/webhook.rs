//! The validating admission webhook: `kubectl apply` refuses a `DeviceRollout` or `Hub`
//! that `ringmaster validate` refuses, with the same messages.
//!
//! The controller serves `POST /validate` over HTTPS (`--webhook-addr`) and answers
//! `AdmissionReview` v1 (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/).
//! Every object is checked by [`crate::manifest::check_object`], the code behind
//! `ringmaster validate`: the kind and version, the fields the types know, then
//! [`crate::core::validate`] (twin queries, CEL gates, metrics the gates name, content
//! paths, IoT Hub limits). An update that leaves `spec` as it was (the controller's
//! finalizer, an operator annotation) and an object being deleted are always allowed, so
//! that a rollout stored before a check existed can still be paused, resumed and deleted.
//!
//! Certificates: the controller makes them itself; nothing else is needed.
//! - In a cluster (the chart, `--webhook-service`), the CA and the serving certificate
//!   (for `<service>.<namespace>.svc`) live in the Secret `--webhook-secret` in the
//!   controller's namespace: the first replica creates it, every replica serves the same
//!   certificate, and each keeps the `caBundle` of the ValidatingWebhookConfiguration the
//!   chart installs (`--webhook-configuration`) equal to that CA (checked every minute,
//!   so a configuration re-created by `helm upgrade` is fixed within one).
//!   The chart does not generate them with Helm's `genCA`: `manifests/install.yaml` is
//!   rendered from the chart, and would then carry a private key in the repository and
//!   a different one on every render.
//! - Outside a cluster (`--webhook-url`, for tests and development), a CA is made in
//!   memory at start and the controller registers the ValidatingWebhookConfiguration
//!   itself, pointing at that URL.
//!
//! Failure policy: `Ignore` by default (`--webhook-failure-policy`, chart value
//! `webhook.failurePolicy`). While no controller answers, `kubectl apply` accepts
//! rollouts unchecked, and the controller marks a bad one `Failed` (reason `InvalidSpec`)
//! when it comes back: the reconcile runs the same validation, so nothing bad ever
//! reaches a hub. `Fail` refuses every create and update of a rollout or Hub while the
//! controller is down or not yet ready (including a `helm install` that applies
//! rollouts with the chart, and GitOps syncs during an upgrade).

use crate::manifest::check_object;
use anyhow::{Context as _, Result};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The path the webhook is served on.
pub const PATH: &str = "/validate";
/// How often the controller checks that the webhook configuration trusts its CA.
pub const CA_BUNDLE_CHECK: Duration = Duration::from_secs(60);

/// Flags of the admission webhook (part of `run --kube`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WebhookArgs {
    /// Serve the validating admission webhook over HTTPS on this address (the chart:
    /// `0.0.0.0:9443`). Without it, no webhook is served.
    #[arg(long, env = "RINGMASTER_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,

    /// Out of a cluster: register the webhook at this URL (`https://127.0.0.1:9443/validate`),
    /// with a CA made at start. Needs `--webhook-addr`.
    #[arg(
        long,
        env = "RINGMASTER_WEBHOOK_URL",
        conflicts_with = "webhook_service"
    )]
    pub webhook_url: Option<String>,

    /// In a cluster: the Service in front of the webhook; the certificate is made for
    /// `<service>.<namespace>.svc` and kept in `--webhook-secret`.
    #[arg(long, env = "RINGMASTER_WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,

    /// The ValidatingWebhookConfiguration whose `caBundle` the controller keeps current
    /// (and which it creates with `--webhook-url`).
    #[arg(
        long,
        env = "RINGMASTER_WEBHOOK_CONFIGURATION",
        default_value = "ringmaster"
    )]
    pub webhook_configuration: String,

    /// The Secret (in the controller's namespace) holding the webhook's CA and
    /// certificate, with `--webhook-service`. Default: `<service>-webhook-tls`.
    #[arg(long, env = "RINGMASTER_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,

    /// With `--webhook-url`: what the API server does when the webhook cannot be reached
    /// (`Ignore`: accept unchecked; `Fail`: refuse).
    #[arg(long, env = "RINGMASTER_WEBHOOK_FAILURE_POLICY", default_value = "Ignore",
          value_parser = ["Ignore", "Fail"])]
    pub webhook_failure_policy: String,
}

/// A CA and the serving certificate it signed, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certs {
    /// The CA certificate: the webhook configuration's `caBundle`.
    pub ca: String,
    /// The serving certificate.
    pub cert: String,
    /// The serving certificate's private key.
    pub key: String,
}

impl Certs {
    /// Makes a CA and a serving certificate for `names` (DNS names or IP addresses),
    /// both valid for ten years.
    pub fn generate(names: &[String]) -> Result<Certs> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let now = jiff::Timestamp::now().as_second();
        let year = 1970 + (now / 31_557_600) as i32;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "ringmaster webhook CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        ca.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let mut p = CertificateParams::new(names.to_vec())?;
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("ringmaster"),
        );
        p.use_authority_key_identifier_extension = true;
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok(Certs {
            ca: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    fn server_config(&self) -> Result<rustls::ServerConfig> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .context("the webhook certificate is not PEM")?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes())
            .context("the webhook key is not a PEM private key")?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the webhook certificate and key do not belong together")?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    fn from_secret(s: &Secret) -> Option<Certs> {
        let data = s.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|v| !v.is_empty())
        };
        Some(Certs {
            ca: get("ca.crt")?,
            cert: get("tls.crt")?,
            key: get("tls.key")?,
        })
    }
}

/// The answer to one `AdmissionReview` request (its `response`).
pub fn review(request: &Value) -> Value {
    let uid = request.get("uid").cloned().unwrap_or(Value::Null);
    let allow = || json!({"uid": uid, "allowed": true});
    let operation = request.get("operation").and_then(Value::as_str);
    let Some(object) = request.get("object").filter(|o| o.is_object()) else {
        return allow();
    };
    if !matches!(operation, Some("CREATE" | "UPDATE")) {
        return allow();
    }
    let meta = object.get("metadata");
    if meta.and_then(|m| m.get("deletionTimestamp")).is_some() {
        return allow();
    }
    if operation == Some("UPDATE") {
        let old_spec = request.get("oldObject").and_then(|o| o.get("spec"));
        if old_spec.is_some() && old_spec == object.get("spec") {
            return allow();
        }
    }
    // Only what a user writes in metadata is checked; the API server's own fields
    // (uid, managedFields, ...) are not the manifest's.
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
    }
    match check_object(&object) {
        Ok(_) => allow(),
        Err(errors) => {
            let message = errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            json!({
                "uid": uid,
                "allowed": false,
                "status": {"code": 422, "reason": "Invalid", "message": message}
            })
        }
    }
}

async fn handle(State(()): State<()>, Json(body): Json<Value>) -> Json<Value> {
    let response = match body.get("request") {
        Some(request) => review(request),
        None => {
            json!({"allowed": false, "status": {"code": 400, "message": "not an AdmissionReview: no `request`"}})
        }
    };
    Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// The webhook's routes.
pub fn router() -> Router {
    Router::new().route(PATH, post(handle)).with_state(())
}

/// Serves the webhook with `certs` on `tcp` until the process ends.
pub async fn serve(tcp: tokio::net::TcpListener, certs: &Certs) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()?));
    crate::net::serve_with(
        tcp,
        router(),
        crate::net::Limits::DEFAULT,
        std::future::pending(),
        move |io| {
            let acceptor = acceptor.clone();
            async move { acceptor.accept(io).await }
        },
    )
    .await?;
    Ok(())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// The rules: creates and updates of rollouts and Hubs (not their status).
fn rules() -> Value {
    json!([{
        "apiGroups": [crate::resources::GROUP],
        "apiVersions": ["v1alpha1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["devicerollouts", "hubs"],
        "scope": "Namespaced"
    }])
}

/// Out of a cluster: creates or replaces the ValidatingWebhookConfiguration `name`,
/// calling `url` and trusting `certs.ca` (server-side apply).
pub async fn register_url(
    client: &Client,
    name: &str,
    url: &str,
    failure_policy: &str,
    certs: &Certs,
) -> Result<()> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let vwc = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "validate.ringmaster.dev",
            "clientConfig": {"url": url, "caBundle": b64(&certs.ca)},
            "rules": rules(),
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5
        }]
    });
    api.patch(
        name,
        &PatchParams::apply(super::FIELD_MANAGER).force(),
        &Patch::Apply(&vwc),
    )
    .await
    .with_context(|| format!("cannot register the ValidatingWebhookConfiguration {name}"))?;
    Ok(())
}

/// In a cluster: the CA and certificate from the Secret `secret` in `namespace`, made and
/// stored there first if the Secret does not exist (the first replica makes them; the
/// others read them).
pub async fn certs_from_secret(
    client: &Client,
    namespace: &str,
    secret: &str,
    service: &str,
) -> Result<Certs> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = || format!("the webhook's Secret {namespace}/{secret}");
    if let Some(s) = api.get_opt(secret).await.with_context(what)? {
        return Certs::from_secret(&s).with_context(|| {
            format!(
                "{} lacks ca.crt, tls.crt or tls.key; delete it to have it made again",
                what()
            )
        });
    }
    let names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ];
    let certs = Certs::generate(&names)?;
    let obj: Secret = serde_json::from_value(json!({
        "metadata": {"name": secret, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "ringmaster", "app.kubernetes.io/component": "webhook"}},
        "type": "kubernetes.io/tls",
        "stringData": {"ca.crt": certs.ca, "tls.crt": certs.cert, "tls.key": certs.key}
    }))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(certs),
        // Another replica made it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(secret).await.with_context(what)?;
            Certs::from_secret(&s).with_context(|| format!("{} is incomplete", what()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", what())),
    }
}

/// Sets the `caBundle` of every webhook of the configuration `name` to `ca` unless it
/// already is. Returns whether it changed anything.
pub async fn ensure_ca_bundle(client: &Client, name: &str, ca: &str) -> Result<bool> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let vwc = api
        .get(name)
        .await
        .with_context(|| format!("cannot read the ValidatingWebhookConfiguration {name}"))?;
    let want = ca.as_bytes();
    let mut webhooks = vwc.webhooks.clone().unwrap_or_default();
    let mut changed = false;
    for w in &mut webhooks {
        if w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(want) {
            w.client_config.ca_bundle = Some(k8s_openapi::ByteString(want.to_vec()));
            changed = true;
        }
    }
    if !changed {
        return Ok(false);
    }
    // A merge patch replaces the list whole; the resourceVersion makes it fail rather
    // than undo a change made since the read.
    let patch = json!({
        "metadata": {"resourceVersion": vwc.metadata.resource_version},
        "webhooks": webhooks,
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| {
            format!("cannot set the caBundle of the ValidatingWebhookConfiguration {name}")
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(target: &str) -> Value {
        json!({
            "apiVersion": "ringmaster.dev/v1alpha1",
            "kind": "DeviceRollout",
            "metadata": {"name": "fw", "namespace": "fleet", "uid": "u1",
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                         "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 3},
            "spec": {
                "target": "*",
                "content": {"device": {"properties.desired.fw": {"v": 1}}},
                "rings": [{"name": "all", "target": target}]
            }
        })
    }

    #[test]
    fn a_bad_rollout_is_refused_with_validates_messages_and_a_good_one_allowed() {
        let r =
            review(&json!({"uid": "1", "operation": "CREATE", "object": rollout("tags.x = =")}));
        assert_eq!(r["uid"], "1");
        assert_eq!(r["allowed"], false);
        let message = r["status"]["message"].as_str().unwrap();
        assert!(message.starts_with("spec.rings[0].target: "), "{message}");
        let r = review(&json!({"uid": "2", "operation": "CREATE", "object": rollout("*")}));
        assert_eq!(r["allowed"], true, "{r}");
    }

    #[test]
    fn updates_that_keep_the_spec_and_deletions_are_always_allowed() {
        let bad = rollout("tags.x = =");
        let r =
            review(&json!({"uid": "1", "operation": "UPDATE", "object": bad, "oldObject": bad}));
        assert_eq!(r["allowed"], true);
        let mut deleting = bad.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let r = review(
            &json!({"uid": "1", "operation": "UPDATE", "object": deleting, "oldObject": rollout("*")}),
        );
        assert_eq!(r["allowed"], true);
        let r = review(
            &json!({"uid": "1", "operation": "UPDATE", "object": bad, "oldObject": rollout("*")}),
        );
        assert_eq!(r["allowed"], false);
    }

    #[test]
    fn a_generated_certificate_makes_a_server_config() {
        let certs = Certs::generate(&["127.0.0.1".into(), "svc.ns.svc".into()]).unwrap();
        assert!(certs.ca.contains("BEGIN CERTIFICATE"));
        certs.server_config().unwrap();
    }
}
