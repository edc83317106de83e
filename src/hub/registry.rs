//! The device registry: devices, their twins, and twin queries with paging.
//!
//! Every operation here changes one device (or reads many) and marks a changed twin dirty,
//! so that the next engine cycle ([`super::engine`]) re-checks it against every
//! configuration. Service-side twin updates change tags and desired properties; the device
//! side changes reported properties
//! (<https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-device-twins>).
//!
//! Queries return pages of at most [`MAX_PAGE_SIZE`] items; the continuation token names
//! the slot where the next page starts, so a page costs the same wherever it is in the
//! registry (<https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-query-language>).

use super::state::{Changes, HubState, Slot};
use crate::iothub::configuration::MAX_QUERY_LEN;
use crate::iothub::device::{Device, device_etag, generate_key};
use crate::iothub::error::{ErrorCode, HubError, Result};
use crate::iothub::query::{Condition, ItemType, Query};
use crate::iothub::twin::{Section, Twin, TwinRow, merge_patch, strip_system_keys};
use crate::iothub::value::Row;
use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Map, Value};

/// Largest page a twin query returns, and the page size when the request names none
/// (`x-ms-max-item-count`).
pub const MAX_PAGE_SIZE: usize = 100;

/// How many slots ahead of the one being evaluated a scan prefetches. Twins live on the
/// heap in slot order; fetching a dozen ahead hides most of the memory latency of a
/// full scan without evicting what is being evaluated.
const PREFETCH_AHEAD: usize = 12;

/// The first field of a continuation token: names the token's format, so a token from an
/// older format (or another hub) is refused rather than misread.
const CONTINUATION_FORMAT: &str = "rm1";

/// Digits in a device's `generationId` (IoT Hub issues 18-digit decimal numbers).
const GENERATION_ID_DIGITS: u32 = 18;

/// The authentication type whose keys the hub generates when they are left empty.
const AUTH_SAS: &str = "sas";

/// Strips one layer of quotes from an If-Match value; `None` and `*` mean unconditional.
pub fn if_match(etag: Option<&str>) -> Option<&str> {
    let e = etag?.trim();
    let e = e
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(e);
    if e == "*" || e.is_empty() {
        None
    } else {
        Some(e)
    }
}

pub(super) fn precondition_failed(what: &str) -> HubError {
    HubError::new(
        ErrorCode::PreconditionFailed,
        format!(
            "The etag in the request does not match the etag of the existing {what}, as per RFC7232; read it again and retry with its current etag"
        ),
    )
}

impl HubState {
    fn slot_mut(&mut self, device_id: &str) -> Result<(u32, &mut Slot)> {
        let i = *self
            .index
            .get(device_id)
            .ok_or_else(|| not_found(device_id))?;
        self.journal_slot(i);
        Ok((
            i,
            self.slots[i as usize]
                .as_mut()
                .expect("indexed slot exists"),
        ))
    }

    /// Creates a device and its twin. The twin may start with tags and desired properties
    /// (bulk import does this).
    pub fn create_device(
        &mut self,
        mut device: Device,
        initial: Option<&Value>,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Device> {
        device.validate()?;
        if self.index.contains_key(&device.device_id) {
            return Err(HubError::new(
                ErrorCode::DeviceAlreadyExists,
                format!(
                    "A device with ID '{}' is already registered",
                    device.device_id
                ),
            ));
        }
        if device.authentication.kind == AUTH_SAS {
            let k = &mut device.authentication.symmetric_key;
            if k.primary_key.as_deref().unwrap_or("").is_empty() {
                k.primary_key = Some(generate_key());
            }
            if k.secondary_key.as_deref().unwrap_or("").is_empty() {
                k.secondary_key = Some(generate_key());
            }
        }
        device.generation_id = format!(
            "{:0width$}",
            rand::random::<u64>() % 10u64.pow(GENERATION_ID_DIGITS),
            width = GENERATION_ID_DIGITS as usize
        );
        let e = self.next_etag();
        device.etag = device_etag(e);
        device.status_updated_time = now;
        let mut twin = Twin::new(now);
        if let Some(init) = initial {
            apply_twin_sections(&mut twin, init, false)?;
        }
        let slot = Slot {
            device: device.clone(),
            twin,
            owners: Vec::new(),
            statuses: Vec::new(),
        };
        if !self.free.is_empty() {
            self.journal_free();
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => self.slots.len() as u32,
        };
        self.journal_slot(i);
        if i as usize == self.slots.len() {
            self.slots.push(Some(slot));
        } else {
            self.slots[i as usize] = Some(slot);
        }
        self.index.insert(device.device_id.clone(), i);
        self.mark_dirty(i);
        changes.devices.push(device.device_id.clone());
        Ok(device)
    }

    /// Updates a device identity (status, status reason, keys).
    pub fn update_device(
        &mut self,
        device: Device,
        etag: Option<&str>,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Device> {
        device.validate()?;
        let e = self.next_etag();
        let (_, slot) = self.slot_mut(&device.device_id)?;
        if let Some(want) = if_match(etag)
            && want != slot.device.etag
        {
            return Err(precondition_failed("device"));
        }
        let cur = &mut slot.device;
        if cur.status != device.status || cur.status_reason != device.status_reason {
            cur.status_updated_time = now;
        }
        cur.status = device.status;
        cur.status_reason = device.status_reason;
        if device.authentication.kind == AUTH_SAS {
            let k = &device.authentication.symmetric_key;
            if k.primary_key.as_deref().is_some_and(|s| !s.is_empty()) {
                cur.authentication.symmetric_key = k.clone();
            }
        } else {
            cur.authentication = device.authentication;
        }
        cur.capabilities = device.capabilities;
        cur.etag = device_etag(e);
        let out = cur.clone();
        changes.devices.push(out.device_id.clone());
        Ok(out)
    }

    /// Deletes a device and its twin.
    pub fn delete_device(
        &mut self,
        device_id: &str,
        etag: Option<&str>,
        changes: &mut Changes,
    ) -> Result<()> {
        let (i, slot) = self.slot_mut(device_id)?;
        if let Some(want) = if_match(etag)
            && want != slot.device.etag
        {
            return Err(precondition_failed("device"));
        }
        self.slots[i as usize] = None;
        self.index.remove(device_id);
        self.journal_free();
        self.free.push(i);
        self.forget_slot(i);
        self.dirty_flag.set(i, false);
        self.dirty.retain(|&d| d != i);
        changes.deleted_devices.push(device_id.to_string());
        Ok(())
    }

    /// A twin as JSON.
    pub fn twin_json(&self, device_id: &str) -> Result<Value> {
        self.slot(device_id)
            .map(|s| s.row().to_json())
            .ok_or_else(|| not_found(device_id))
    }

    /// Service-side twin update: `replace` swaps tags and desired whole (PUT), otherwise
    /// they are merged (PATCH, `null` deletes).
    pub fn update_twin(
        &mut self,
        device_id: &str,
        patch: &Value,
        etag: Option<&str>,
        replace: bool,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Value> {
        if !patch.is_object() {
            return Err(HubError::invalid(
                "the twin patch must be a JSON object with tags and/or properties.desired",
            ));
        }
        let e = self.next_etag();
        let (i, slot) = self.slot_mut(device_id)?;
        if let Some(want) = if_match(etag)
            && want != slot.twin.etag()
        {
            return Err(precondition_failed("twin"));
        }
        let mut twin = slot.twin.clone();
        let (tags_changed, desired_changed) = apply_twin_sections(&mut twin, patch, replace)?;
        if tags_changed || desired_changed {
            twin.version += 1;
        }
        if desired_changed {
            twin.desired_version += 1;
            twin.desired_updated = now;
        }
        twin.etag_counter = e;
        slot.twin = twin;
        let out = slot.row().to_json();
        self.mark_dirty(i);
        changes.devices.push(device_id.to_string());
        Ok(out)
    }

    /// Device-side reported-properties patch (merge, `null` deletes). Returns the new
    /// reported `$version`.
    pub fn patch_reported(
        &mut self,
        device_id: &str,
        patch: &Value,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<i64> {
        let Some(p) = patch.as_object() else {
            return Err(HubError::invalid(
                "a reported-properties patch must be a JSON object",
            ));
        };
        let e = self.next_etag();
        let (i, slot) = self.slot_mut(device_id)?;
        if slot.device.status == "disabled" {
            return Err(HubError::new(
                ErrorCode::IotHubUnauthorizedAccess,
                format!("device '{device_id}' is disabled"),
            ));
        }
        let mut p = p.clone();
        strip_system_keys(&mut p);
        let mut rep = slot.twin.section(Section::Reported);
        merge_patch(&mut rep, &p);
        slot.twin.set_section(Section::Reported, &rep)?;
        slot.twin.reported_version += 1;
        slot.twin.reported_updated = now;
        slot.twin.etag_counter = e;
        slot.device.last_activity_time = now;
        let v = slot.twin.reported_version;
        self.mark_dirty(i);
        changes.devices.push(device_id.to_string());
        Ok(v)
    }

    // ----- queries ----------------------------------------------------------------

    /// Runs a twin query and returns one page (see [`crate::iothub::page::QueryPage`] for the shape).
    pub fn query(
        &self,
        text: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<(ItemType, Vec<Value>, Option<String>)> {
        if text.len() > MAX_QUERY_LEN {
            return Err(HubError::new(
                ErrorCode::BadRequest,
                format!(
                    "query is {} characters long; at most {MAX_QUERY_LEN} are allowed",
                    text.len()
                ),
            ));
        }
        let q = Query::parse(text)
            .map_err(|e| HubError::new(ErrorCode::BadRequest, format!("query: {e}")))?;
        let cond = q.condition();
        if q.is_aggregate() {
            let rows: Vec<TwinRow<'_>> = self
                .matching(cond)
                .iter()
                .filter_map(|i| self.slots[i as usize].as_ref())
                .map(|s| s.row())
                .collect();
            let mut it = rows.iter().map(|r| r as &dyn Row);
            let mut out = q.aggregate(&mut it);
            if let Some(top) = q.top() {
                out.truncate(top);
            }
            return Ok((q.item_type(), out, None));
        }
        let page = page_size.unwrap_or(MAX_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        let (mut start, mut emitted) = match continuation {
            Some(tok) if !tok.is_empty() => decode_continuation(tok)?,
            _ => (0, 0),
        };
        let top = q.top();
        let hits = self.matching(cond);
        let mut out = Vec::new();
        for i in hits.iter_from(start) {
            if out.len() >= page || top.is_some_and(|t| emitted >= t) {
                break;
            }
            if let Some(slot) = &self.slots[i as usize] {
                out.push(q.project(&slot.row()));
                emitted += 1;
            }
            start = i + 1;
        }
        let more = top.is_none_or(|t| emitted < t) && hits.iter_from(start).next().is_some();
        let token = more.then(|| encode_continuation(start, emitted));
        Ok((q.item_type(), out, token))
    }
}

/// See [`HubState::scan`].
pub(super) fn scan_slots<'a>(
    slots: &'a [Option<Slot>],
    cond: Option<&Condition>,
    mut f: impl FnMut(u32, &'a Slot),
) {
    for i in 0..slots.len() {
        if let Some(Some(next)) = slots.get(i + PREFETCH_AHEAD) {
            next.twin.prefetch();
        }
        if let Some(slot) = &slots[i]
            && cond.is_none_or(|c| c.matches(&slot.row()))
        {
            f(i as u32, slot);
        }
    }
}

fn encode_continuation(slot: u32, emitted: usize) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("{CONTINUATION_FORMAT}:{slot}:{emitted}"))
}

fn decode_continuation(tok: &str) -> Result<(u32, usize)> {
    let bad = || {
        HubError::new(
            ErrorCode::BadRequest,
            "x-ms-continuation is not a token this hub issued; start the query again without it",
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(tok.trim())
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let mut it = s.split(':');
    if it.next() != Some(CONTINUATION_FORMAT) {
        return Err(bad());
    }
    let slot = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    let emitted = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    Ok((slot, emitted))
}

/// Applies the `tags` and `properties.desired` members of a service-side twin update.
/// Returns which of the two changed. Nothing is written to `twin` on error.
fn apply_twin_sections(twin: &mut Twin, patch: &Value, replace: bool) -> Result<(bool, bool)> {
    let mut work = twin.clone();
    let mut tags_changed = false;
    let mut desired_changed = false;
    let tags = patch.get("tags");
    if let Some(t) = tags.filter(|t| !t.is_null()) {
        let Some(t) = t.as_object() else {
            return Err(HubError::invalid("'tags' must be a JSON object"));
        };
        let mut cur = if replace {
            Map::new()
        } else {
            work.section(Section::Tags)
        };
        merge_patch(&mut cur, t);
        if cur != work.section(Section::Tags) {
            work.set_section(Section::Tags, &cur)?;
            tags_changed = true;
        }
    } else if replace && !work.section(Section::Tags).is_empty() {
        work.set_section(Section::Tags, &Map::new())?;
        tags_changed = true;
    }
    let desired = patch.get("properties").and_then(|p| p.get("desired"));
    if let Some(d) = desired.filter(|d| !d.is_null()) {
        let Some(d) = d.as_object() else {
            return Err(HubError::invalid(
                "'properties.desired' must be a JSON object",
            ));
        };
        let mut d = d.clone();
        strip_system_keys(&mut d);
        let mut cur = if replace {
            Map::new()
        } else {
            work.section(Section::Desired)
        };
        merge_patch(&mut cur, &d);
        if cur != work.section(Section::Desired) {
            work.set_section(Section::Desired, &cur)?;
            desired_changed = true;
        }
    } else if replace && !work.section(Section::Desired).is_empty() {
        work.set_section(Section::Desired, &Map::new())?;
        desired_changed = true;
    }
    if patch
        .get("properties")
        .and_then(|p| p.get("reported"))
        .is_some_and(|r| !r.is_null() && r.as_object().is_some_and(|m| !m.is_empty()))
    {
        return Err(HubError::invalid(
            "reported properties are written by the device; a service twin update may change tags and properties.desired only",
        ));
    }
    *twin = work;
    Ok((tags_changed, desired_changed))
}

fn not_found(device_id: &str) -> HubError {
    HubError::new(
        ErrorCode::DeviceNotFound,
        format!("Device {device_id} not registered"),
    )
}
