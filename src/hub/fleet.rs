//! A simulated device fleet.
//!
//! A small YAML spec says how many devices there are and how their tags are distributed
//! (quality ring, model, region, by share), and how the devices behave. The agent then
//! plays every device: it reads the desired properties from the hub and reports progress
//! the way the seed recommends devices report it. For a `firmware` section:
//! `Downloading` → `Applying` → `Current`, or `Error` with a probability set per model and
//! version. Other sections named in `settings` (for example `network`) are echoed back as
//! reported with `status: Applied`. A share of devices is offline and never answers.
//!
//! Time comes from the hub's clock, so the agent runs in virtual time in tests and the
//! demo: [`FleetAgent::tick`] does whatever is due at the clock's current instant.

use super::EmbeddedHub;
use crate::iothub::device::Device;
use crate::iothub::error::Result;
use crate::iothub::path::intern_lc;
use crate::iothub::twin::Section;
use crate::iothub::value::{Row, Val};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// The fleet spec (`fleet.yaml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetSpec {
    /// Number of devices.
    pub devices: usize,
    /// Device ids are `<idPrefix><number>`, zero-padded.
    #[serde(default = "default_prefix")]
    pub id_prefix: String,
    /// Seed for every random choice, so a fleet is the same on every run.
    #[serde(default)]
    pub seed: u64,
    /// Tags every device carries.
    #[serde(default)]
    pub tags: BTreeMap<String, Value>,
    /// Share of devices per quality ring (tag `ring`).
    #[serde(default)]
    pub rings: BTreeMap<String, f64>,
    /// Share of devices per model (tag `model` and reported `model`).
    #[serde(default)]
    pub models: BTreeMap<String, f64>,
    /// Share of devices per region (tag `region`).
    #[serde(default)]
    pub regions: BTreeMap<String, f64>,
    /// Share of devices that never come online.
    #[serde(default)]
    pub offline: f64,
    /// How devices handle the `firmware` section.
    #[serde(default)]
    pub firmware: FirmwareBehaviour,
    /// Other desired sections devices apply and echo back (for example `network`).
    #[serde(default)]
    pub settings: Vec<String>,
}

fn default_prefix() -> String {
    "device-".into()
}

/// How devices react to `properties.desired.firmware`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FirmwareBehaviour {
    /// The version devices run at the start.
    #[serde(default = "default_initial")]
    pub initial: String,
    /// Seconds spent in `Downloading`.
    #[serde(default = "default_download")]
    pub download_seconds: f64,
    /// Seconds spent in `Applying`.
    #[serde(default = "default_apply")]
    pub apply_seconds: f64,
    /// Each device's latency varies by up to this share either way.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Probability of `Error`, per model and version.
    #[serde(default)]
    pub failures: Vec<FailureRate>,
}

fn default_initial() -> String {
    "1.0.0".into()
}
fn default_download() -> f64 {
    20.0
}
fn default_apply() -> f64 {
    10.0
}
fn default_jitter() -> f64 {
    0.5
}

impl Default for FirmwareBehaviour {
    fn default() -> Self {
        FirmwareBehaviour {
            initial: default_initial(),
            download_seconds: default_download(),
            apply_seconds: default_apply(),
            jitter: default_jitter(),
            failures: Vec::new(),
        }
    }
}

/// A failure probability for devices of a model (or every model) installing a version.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureRate {
    /// The model; every model when omitted.
    #[serde(default)]
    pub model: Option<String>,
    /// The firmware version that fails.
    pub version: String,
    /// Probability between 0 and 1.
    pub rate: f64,
}

impl FleetSpec {
    /// Parses a fleet spec; the error names the file and what is wrong.
    pub fn parse(file: &str, text: &str) -> std::result::Result<FleetSpec, String> {
        let spec: FleetSpec = serde_saphyr::from_str(text).map_err(|e| format!("{file}: {e}"))?;
        spec.validate().map_err(|e| format!("{file}: {e}"))?;
        Ok(spec)
    }

    /// Checks shares and rates.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (field, shares) in [
            ("rings", &self.rings),
            ("models", &self.models),
            ("regions", &self.regions),
        ] {
            if shares
                .values()
                .any(|s| !(0.0..=1.0).contains(s) || s.is_nan())
            {
                return Err(format!("{field}: every share must be between 0 and 1"));
            }
            let total: f64 = shares.values().sum();
            if !shares.is_empty() && (total - 1.0).abs() > 0.001 {
                return Err(format!(
                    "{field}: shares add up to {total}; they must add up to 1"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.offline) {
            return Err("offline: must be a share between 0 and 1".into());
        }
        if let Some(f) = self
            .firmware
            .failures
            .iter()
            .find(|f| !(0.0..=1.0).contains(&f.rate))
        {
            return Err(format!(
                "firmware.failures: rate {} for version {} must be between 0 and 1",
                f.rate, f.version
            ));
        }
        if self.firmware.download_seconds < 0.0 || self.firmware.apply_seconds < 0.0 {
            return Err("firmware: downloadSeconds and applySeconds must not be negative".into());
        }
        Ok(())
    }

    /// The id of device number `i`.
    pub fn device_id(&self, i: usize) -> String {
        let width = self.devices.max(1).to_string().len().max(4);
        format!("{}{:0width$}", self.id_prefix, i, width = width)
    }
}

/// A deterministic number in [0, 1) from a seed, a device id and a salt (splitmix64).
fn unit(seed: u64, id: &str, salt: &str) -> f64 {
    let mut h: u64 = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in id.bytes().chain([0xff]).chain(salt.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
        h ^= h >> 29;
    }
    h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Assigns exactly round(share × n) members to each key, spread evenly through the fleet.
fn apportion(
    shares: &BTreeMap<String, f64>,
    n: usize,
    seed: u64,
    salt: &str,
) -> Vec<Option<String>> {
    if shares.is_empty() {
        return vec![None; n];
    }
    // Order devices by a seeded hash, then hand out contiguous runs of that order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| {
        unit(seed, &a.to_string(), salt)
            .partial_cmp(&unit(seed, &b.to_string(), salt))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out = vec![None; n];
    let keys: Vec<(&String, &f64)> = shares.iter().collect();
    let mut pos = 0;
    let mut acc = 0.0;
    for (k, (name, share)) in keys.iter().enumerate() {
        acc += **share;
        let end = if k + 1 == keys.len() {
            n
        } else {
            ((acc * n as f64).round() as usize).min(n)
        };
        for &d in &order[pos..end.max(pos)] {
            out[d] = Some((*name).clone());
        }
        pos = end.max(pos);
    }
    out
}

/// Where one device is in installing a firmware version.
#[derive(Clone, Debug)]
struct Progress {
    target: String,
    started: Timestamp,
    applying: bool,
}

/// Plays every device of a simulated fleet against an embedded hub.
pub struct FleetAgent {
    hub: EmbeddedHub,
    spec: FleetSpec,
    progress: HashMap<String, Progress>,
    settings_pending: HashMap<(String, String), Timestamp>,
    seen_desired: HashMap<String, i64>,
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickStats {
    /// Reported-property patches sent to the hub in this tick (refused ones included).
    pub reports: usize,
    /// Firmware updates and settings sections still under way after this tick.
    pub in_progress: usize,
}

impl FleetAgent {
    /// Creates the fleet's devices on the hub (skipping any that exist) and returns the
    /// agent that plays them.
    pub fn create(hub: &EmbeddedHub, spec: FleetSpec) -> Result<FleetAgent> {
        let n = spec.devices;
        let rings = apportion(&spec.rings, n, spec.seed, "ring");
        let models = apportion(&spec.models, n, spec.seed, "model");
        let regions = apportion(&spec.regions, n, spec.seed, "region");
        let mut new = Vec::new();
        let mut reported = Vec::new();
        for i in 0..n {
            let id = spec.device_id(i);
            if hub.read(|st| st.slot(&id).is_some()) {
                continue;
            }
            let mut tags = serde_json::Map::new();
            for (k, v) in &spec.tags {
                tags.insert(k.clone(), v.clone());
            }
            for (k, v) in [
                ("ring", &rings[i]),
                ("model", &models[i]),
                ("region", &regions[i]),
            ] {
                if let Some(v) = v {
                    tags.insert(k.into(), Value::String(v.clone()));
                }
            }
            let mut rep =
                json!({"firmware": {"version": spec.firmware.initial, "status": "Current"}});
            if let Some(m) = &models[i] {
                rep["model"] = Value::String(m.clone());
            }
            new.push((Device::new(&id), Some(json!({"tags": tags}))));
            reported.push((id, rep));
        }
        for chunk in new.chunks(10_000) {
            hub.create_devices(chunk.to_vec())?;
        }
        for chunk in reported.chunks(10_000) {
            for r in hub.patch_reported_many(chunk)? {
                r?;
            }
        }
        Ok(FleetAgent {
            hub: hub.clone(),
            spec,
            progress: HashMap::new(),
            settings_pending: HashMap::new(),
            seen_desired: HashMap::new(),
        })
    }

    /// The spec the fleet was created from.
    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    /// True when the device never comes online.
    pub fn is_offline(&self, device_id: &str) -> bool {
        unit(self.spec.seed, device_id, "offline") < self.spec.offline
    }

    fn latency(&self, device_id: &str, base: f64, salt: &str) -> SignedDuration {
        let j = self.spec.firmware.jitter.clamp(0.0, 1.0);
        let f = 1.0 + j * (unit(self.spec.seed, device_id, salt) * 2.0 - 1.0);
        SignedDuration::from_secs_f64((base * f).max(0.0))
    }

    fn fails(&self, device_id: &str, model: Option<&str>, version: &str) -> bool {
        let rate = self
            .spec
            .firmware
            .failures
            .iter()
            .filter(|f| f.version == version && (f.model.is_none() || f.model.as_deref() == model))
            .map(|f| f.rate)
            .fold(0.0, f64::max);
        unit(self.spec.seed, device_id, &format!("fail:{version}")) < rate
    }

    /// Does whatever is due at the hub clock's current instant; reports go to the hub in
    /// one transaction.
    pub fn tick(&mut self) -> Result<TickStats> {
        let now = self.hub.now();
        let p_desired_fw = intern_lc("properties.desired.firmware.version");
        let p_rep_fw = intern_lc("properties.reported.firmware.version");
        let p_rep_status = intern_lc("properties.reported.firmware.status");
        let p_rep_target = intern_lc("properties.reported.firmware.target");
        let p_model = intern_lc("tags.model");
        let p_desired_version = intern_lc("properties.desired.$version");
        struct Seen {
            id: String,
            want: Option<String>,
            have: Option<String>,
            status: Option<String>,
            target: Option<String>,
            model: Option<String>,
            settings: Vec<(String, Value, Option<Value>)>,
        }
        let s = |v: Val<'_>| match v {
            Val::Str(s) => Some(s.to_string()),
            _ => None,
        };
        let settings = self.spec.settings.clone();
        // Read what each device would see, under one read lock.
        let hub = self.hub.clone();
        let seen: Vec<Seen> = hub.read(|st| {
            let mut out = Vec::new();
            for slot in st.slots() {
                let id = &slot.device.device_id;
                if slot.device.status != "enabled" || self.is_offline(id) {
                    continue;
                }
                let row = slot.row();
                let dv = match row.lookup(p_desired_version) {
                    Val::Int(v) => v,
                    _ => 0,
                };
                let busy = self.progress.contains_key(id.as_str())
                    || self.settings_pending.keys().any(|(d, _)| d == id);
                if !busy && self.seen_desired.get(id.as_str()) == Some(&dv) {
                    continue;
                }
                let mut sets = Vec::new();
                if !settings.is_empty() {
                    let desired = slot.twin.section(Section::Desired);
                    let reported = slot.twin.section(Section::Reported);
                    for name in &settings {
                        if let Some(d) = desired.get(name) {
                            sets.push((name.clone(), d.clone(), reported.get(name).cloned()));
                        }
                    }
                }
                out.push(Seen {
                    id: id.clone(),
                    want: s(row.lookup(p_desired_fw)),
                    have: s(row.lookup(p_rep_fw)),
                    status: s(row.lookup(p_rep_status)),
                    target: s(row.lookup(p_rep_target)),
                    model: s(row.lookup(p_model)),
                    settings: sets,
                });
                self.seen_desired.insert(id.clone(), dv);
            }
            out
        });
        let download = self.spec.firmware.download_seconds;
        let apply = self.spec.firmware.apply_seconds;
        let mut patches: Vec<(String, Value)> = Vec::new();
        for d in seen {
            // Firmware.
            match (&d.want, &d.have) {
                (Some(want), have) if Some(want) != have.as_ref() => {
                    let failed_here =
                        d.status.as_deref() == Some("Error") && d.target.as_deref() == Some(want);
                    let p = self.progress.get(&d.id).cloned();
                    match p {
                        _ if failed_here => {
                            self.progress.remove(&d.id);
                        }
                        Some(p) if &p.target == want => {
                            let dl = self.latency(&d.id, download, "download");
                            let ap = self.latency(&d.id, apply, "apply");
                            if !p.applying && now >= p.started + dl {
                                patches.push((
                                    d.id.clone(),
                                    json!({"firmware": {"status": "Applying", "target": want}}),
                                ));
                                self.progress.insert(
                                    d.id.clone(),
                                    Progress {
                                        applying: true,
                                        ..p
                                    },
                                );
                            } else if p.applying && now >= p.started + dl + ap {
                                if self.fails(&d.id, d.model.as_deref(), want) {
                                    patches.push((d.id.clone(), json!({"firmware": {"status": "Error", "target": want, "error": format!("install of {want} failed verification")}})));
                                } else {
                                    patches.push((d.id.clone(), json!({"firmware": {"version": want, "status": "Current", "target": null, "error": null}})));
                                }
                                self.progress.remove(&d.id);
                            }
                        }
                        _ => {
                            patches.push((d.id.clone(), json!({"firmware": {"status": "Downloading", "target": want, "error": null}})));
                            self.progress.insert(
                                d.id.clone(),
                                Progress {
                                    target: want.clone(),
                                    started: now,
                                    applying: false,
                                },
                            );
                        }
                    }
                }
                (Some(_), _) => {
                    // Running the wanted version: make sure the status says so.
                    self.progress.remove(&d.id);
                    if d.status.as_deref() != Some("Current") {
                        patches.push((d.id.clone(), json!({"firmware": {"status": "Current", "target": null, "error": null}})));
                    }
                }
                (None, _) => {
                    self.progress.remove(&d.id);
                }
            }
            // Settings sections: echo after the apply latency.
            for (name, want, have) in d.settings {
                let mut want_rep = want.clone();
                if let Value::Object(m) = &mut want_rep {
                    m.insert("status".into(), "Applied".into());
                }
                if have.as_ref() == Some(&want_rep) {
                    self.settings_pending.remove(&(d.id.clone(), name));
                    continue;
                }
                let key = (d.id.clone(), name.clone());
                let started = *self.settings_pending.entry(key.clone()).or_insert(now);
                if now >= started + self.latency(&d.id, apply, "settings") {
                    let mut patch = serde_json::Map::new();
                    // Replace the section: null out keys that desired no longer has.
                    let mut body = serde_json::Map::new();
                    if let Some(Value::Object(h)) = &have {
                        for k in h.keys() {
                            body.insert(k.clone(), Value::Null);
                        }
                    }
                    if let Value::Object(w) = &want_rep {
                        for (k, v) in w {
                            body.insert(k.clone(), v.clone());
                        }
                    }
                    patch.insert(name.clone(), Value::Object(body));
                    patches.push((d.id.clone(), Value::Object(patch)));
                    self.settings_pending.remove(&key);
                }
            }
        }
        let reports = patches.len();
        if !patches.is_empty() {
            let written = match self.hub.patch_reported_many(&patches) {
                Ok(w) => w,
                Err(e) => {
                    // Nothing was written (the hub's store refused the batch, e.g. its disk
                    // is full): these devices look at their twins again next tick, as a
                    // device whose report did not go through would retry it. Otherwise a
                    // lost `Current` report would leave a device `Applying` for good.
                    for (id, _) in &patches {
                        self.seen_desired.remove(id);
                    }
                    return Err(e);
                }
            };
            for r in written {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "simulated device report refused");
                }
            }
        }
        Ok(TickStats {
            reports,
            in_progress: self.progress.len() + self.settings_pending.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_the_store_refused_is_sent_again_once_it_takes_writes() {
        use crate::clock::ManualClock;
        use crate::iothub::configuration::{Configuration, ConfigurationContent};
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_epoch();
        let hub = EmbeddedHub::open(
            &dir.path().join("hub.db"),
            std::sync::Arc::new(clock.clone()),
            Default::default(),
        )
        .unwrap();
        let spec = FleetSpec::parse(
            "fleet.yaml",
            "devices: 5\nidPrefix: d\nseed: 1\nrings: {all: 1.0}\nmodels: {m: 1.0}\nregions: {r: 1.0}\noffline: 0\nfirmware: {initial: \"1\", downloadSeconds: 1, applySeconds: 1, jitter: 0}\n",
        )
        .unwrap();
        let mut agent = FleetAgent::create(&hub, spec).unwrap();
        hub.create_configuration(&Configuration {
            id: "fw".into(),
            target_condition: "*".into(),
            priority: 1,
            content: ConfigurationContent {
                device_content: Some(
                    json!({"properties.desired.firmware": {"version": "2"}})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        let current = |hub: &EmbeddedHub| {
            let ids: Vec<String> =
                hub.read(|st| st.slots().map(|s| s.device.device_id.clone()).collect());
            assert_eq!(ids.len(), 5);
            ids.iter()
                .filter(|id| {
                    let fw = &hub.get_twin(id).unwrap()["properties"]["reported"]["firmware"];
                    fw["status"] == "Current" && fw["version"] == "2"
                })
                .count()
        };
        // Downloading, then Applying; the store refuses the tick that would report Current.
        agent.tick().unwrap();
        clock.advance(SignedDuration::from_secs(1));
        agent.tick().unwrap();
        clock.advance(SignedDuration::from_secs(1));
        hub.set_store_read_only(true);
        assert!(agent.tick().is_err());
        hub.set_store_read_only(false);
        for _ in 0..10 {
            clock.advance(SignedDuration::from_secs(1));
            agent.tick().unwrap();
        }
        assert_eq!(
            current(&hub),
            5,
            "every device reports the firmware in the end"
        );
    }

    #[test]
    fn apportion_gives_exact_shares() {
        let mut shares = BTreeMap::new();
        shares.insert("canary".to_string(), 0.02);
        shares.insert("early".to_string(), 0.18);
        shares.insert("broad".to_string(), 0.80);
        let a = apportion(&shares, 1000, 7, "ring");
        let count = |k: &str| a.iter().filter(|x| x.as_deref() == Some(k)).count();
        assert_eq!(count("canary"), 20);
        assert_eq!(count("early"), 180);
        assert_eq!(count("broad"), 800);
        assert_eq!(a, apportion(&shares, 1000, 7, "ring"));
    }

    #[test]
    fn spec_errors_name_the_file_and_field() {
        let e =
            FleetSpec::parse("fleet.yaml", "devices: 10\nrings: {a: 0.5, b: 0.2}\n").unwrap_err();
        assert!(e.contains("fleet.yaml") && e.contains("rings"), "{e}");
        let e = FleetSpec::parse("fleet.yaml", "devices: 10\nbogus: 1\n").unwrap_err();
        assert!(e.contains("fleet.yaml") && e.contains("bogus"), "{e}");
        let ok = FleetSpec::parse("f", "devices: 3\nidPrefix: c-\n").unwrap();
        assert_eq!(ok.device_id(2), "c-0002");
    }

    #[test]
    fn unit_is_deterministic_and_spread() {
        assert_eq!(unit(1, "a", "x"), unit(1, "a", "x"));
        let mean: f64 = (0..1000).map(|i| unit(3, &i.to_string(), "s")).sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }
}
