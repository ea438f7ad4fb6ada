//! Bulk domain statistics: the state, CPUs and memory of many domains in one
//! round trip (`virDomainListGetStats`), where asking each domain would cost
//! one or two calls per VM.
//!
//! The virt crate hands these records out only as raw pointers (and frees
//! the list without its records), so this module reads them itself, copies
//! what it needs, and frees the list with libvirt's own function.

use std::collections::HashMap;
use std::ffi::CStr;

use virt::domain::Domain;
use virt::sys;

use super::state::State;

/// What the bulk call says of one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub state: State,
    /// Current virtual CPUs.
    pub vcpus: u32,
    /// Maximum memory, bytes.
    pub max_memory: u64,
}

/// Stats of `doms`, keyed by domain name. A domain that vanished in between
/// is simply absent. Drivers without the bulk call (older ones) are asked
/// domain by domain.
pub fn of(doms: &[&Domain]) -> anyhow::Result<HashMap<String, Stats>> {
    if doms.is_empty() {
        return Ok(HashMap::new());
    }
    match bulk(doms) {
        Ok(m) => Ok(m),
        Err(e) if super::is(&e, virt::error::ErrorNumber::NoSupport) => Ok(one_by_one(doms)),
        Err(e) => Err(super::explain(e, "reading domain statistics")),
    }
}

fn one_by_one(doms: &[&Domain]) -> HashMap<String, Stats> {
    doms.iter()
        .filter_map(|d| {
            let info = d.info().ok()?;
            Some((
                d.name().ok()?,
                Stats { state: State::of(d), vcpus: info.nr_virt_cpu, max_memory: info.max_mem * 1024 },
            ))
        })
        .collect()
}

fn bulk(doms: &[&Domain]) -> Result<HashMap<String, Stats>, virt::error::Error> {
    let which = sys::VIR_DOMAIN_STATS_STATE | sys::VIR_DOMAIN_STATS_VCPU | sys::VIR_DOMAIN_STATS_BALLOON;
    // A NULL-terminated array of the domains' pointers; `doms` keeps them alive.
    let mut ptrs: Vec<sys::virDomainPtr> = doms.iter().map(|d| unsafe { d.as_ptr() }).collect();
    ptrs.push(std::ptr::null_mut());
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `ptrs` is a valid NULL-terminated array; libvirt allocates `records`.
    let n = unsafe { sys::virDomainListGetStats(ptrs.as_mut_ptr(), which, &mut records, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    let mut out = HashMap::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: libvirt returned `n` valid records, freed below.
        let rec = unsafe { &**records.add(i) };
        let name = unsafe { CStr::from_ptr(sys::virDomainGetName(rec.dom)) }.to_string_lossy().into_owned();
        let params = unsafe { std::slice::from_raw_parts(rec.params, rec.nparams.max(0) as usize) };
        out.insert(name, read(params));
    }
    // SAFETY: frees the records, their parameters and their domain references.
    unsafe { sys::virDomainStatsRecordListFree(records) };
    Ok(out)
}

fn read(params: &[sys::virTypedParameter]) -> Stats {
    let mut s = Stats { state: State::Other, vcpus: 0, max_memory: 0 };
    for p in params {
        let field = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_bytes();
        let number = || -> u64 {
            // SAFETY: the union member read is the one `type_` names.
            unsafe {
                match p.type_ as u32 {
                    sys::VIR_TYPED_PARAM_INT => p.value.i.max(0) as u64,
                    sys::VIR_TYPED_PARAM_UINT => p.value.ui as u64,
                    sys::VIR_TYPED_PARAM_LLONG => p.value.l.max(0) as u64,
                    sys::VIR_TYPED_PARAM_ULLONG => p.value.ul,
                    _ => 0,
                }
            }
        };
        match field {
            b"state.state" => s.state = State::from_raw(number() as u32),
            b"vcpu.current" => s.vcpus = number() as u32,
            b"balloon.maximum" => s.max_memory = number() * 1024,
            _ => {}
        }
    }
    s
}
