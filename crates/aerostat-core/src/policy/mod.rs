//! Policies propose balloon targets; the [`crate::Controller`] guards them.
//!
//! A policy is a deterministic state machine over observations: it may remember
//! earlier observations (MoM averages the last ten samples, aerostat keeps trends),
//! but it never reads a clock, a file or a random source.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::controller::GuardConfig;
use crate::decision::Rule;
use crate::observation::Observation;
use crate::units::{Bytes, Millis};

pub mod aerostat;
pub mod mom;
pub mod proxmox;
pub mod static_policy;

/// A policy's wish for one VM, before the guards.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// Index into `Observation::vms`.
    pub vm: usize,
    /// Desired guest memory (balloon target).
    pub target: Bytes,
    pub rule: Rule,
    pub reason: Reason,
}

/// Why a policy proposes a target.
///
/// Most proposals never become actions: the controller drops those within its dead band
/// or equal to the current target. Writing a reason (formatting floats) is the costliest
/// thing a policy does each tick, so a policy may defer it: the controller then asks
/// [`Policy::explain`] for the text of the proposals it sends, and only of those.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    Text(String),
    /// Written on demand by [`Policy::explain`].
    Deferred,
}

impl Reason {
    /// The text, when it was written up front.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reason::Text(s) => Some(s),
            Reason::Deferred => None,
        }
    }
}

/// A guest's working set in two layers, as a policy estimates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkingSet {
    /// Memory the guest cannot lose without swapping or OOM kills: what it uses, plus a
    /// sliver of room.
    pub anon: Bytes,
    /// `anon` plus the page cache the guest re-reads, whose loss costs refaults. Above it
    /// lie free memory and cold cache, which cost the guest nothing.
    pub hot: Bytes,
}

/// The interface every policy implements.
pub trait Policy: Send + fmt::Debug {
    /// The name users type (`--policy NAME`).
    fn name(&self) -> &'static str;
    /// The guards this policy is designed to run under. Baselines run with the
    /// guards their originals have (floor and maximum only) so that they are
    /// reproduced rule for rule.
    fn guards(&self) -> GuardConfig;
    /// Propose targets for this observation into `out` (empty on entry), at most one per
    /// VM, in VM order. `targets[i]` is the balloon target the controller last sent to
    /// `obs.vms[i]` (its `actual` when never sent): a balloon that lags its target is
    /// visible only by comparing the two. VMs without a proposal keep their target. `out`
    /// is the caller's buffer so that a controller ticking millions of times does not
    /// allocate each time.
    fn propose_into(&mut self, obs: &Observation, targets: &[Bytes], out: &mut Vec<Proposal>);
    /// The reason for the proposal for `obs.vms[vm]` that the last
    /// [`Policy::propose_into`] (on this same `obs`) made with [`Reason::Deferred`].
    /// Policies that never defer need not implement it.
    fn explain(&self, obs: &Observation, vm: usize) -> String {
        let _ = (obs, vm);
        String::new()
    }
    /// What `obs.vms[vm]` needs, as the last [`Policy::propose_into`] estimated it from the
    /// guest's (untrusted) statistics; `None` when the policy has no estimate. The
    /// controller's reserve guard takes every guest's cold memory before anyone's hot page
    /// cache, and that before anyone's anonymous memory: a guest's claim orders whose room
    /// is asked for first, and never keeps the guard from its floors.
    fn working_set(&self, vm: usize) -> Option<WorkingSet> {
        let _ = vm;
        None
    }
    /// Memory that guests under memory pressure (swapping in, refaulting) asked for in the
    /// last [`Policy::propose_into`] and did not get because the host is short, plus memory
    /// guests use that the host cannot hold once every guest is at its least (the reserve
    /// guard then takes it from what they use); `None` when the policy does not say. Sustained, it means the guests' working sets no longer fit
    /// the host: the escape's cue to move one away (`planner::escape::Pressure`).
    fn unmet_need(&self) -> Option<Bytes> {
        None
    }
    /// Memory the host holds beyond what balloons claim to have kept, as the controller
    /// counts it this tick (`controller/kept_memory.rs`), told before
    /// [`Policy::propose_into`]: a policy that fits guests into the host's capacity fits
    /// them into that much less. Policies that do not fit need not implement it.
    fn host_keeps(&mut self, kept: Bytes) {
        let _ = kept;
    }
    /// [`Policy::propose_into`] into a new `Vec`, with every deferred reason written out.
    fn propose(&mut self, obs: &Observation, targets: &[Bytes]) -> Vec<Proposal> {
        let mut out = Vec::new();
        self.propose_into(obs, targets, &mut out);
        for p in &mut out {
            if p.reason == Reason::Deferred {
                p.reason = Reason::Text(self.explain(obs, p.vm));
            }
        }
        out
    }
}

/// Settings shared by all policies, from the config or scenario file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Memory kept for the hypervisor and host, never given to guests.
    pub reserve: Bytes,
    /// How often the driver calls the controller.
    pub interval: Millis,
    /// `proxmox` only: the host memory usage to aim for, in percent of total memory
    /// (pvestatd's node option `ballooning-target`, 0-100, default 80).
    pub proxmox_ballooning_target: u32,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            reserve: Bytes::gib(1),
            interval: Millis::secs(2),
            proxmox_ballooning_target: proxmox::DEFAULT_TARGET_PERCENT,
        }
    }
}

/// The policies aerostat ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Static,
    Mom,
    Proxmox,
    Aerostat,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Static,
        PolicyKind::Mom,
        PolicyKind::Proxmox,
        PolicyKind::Aerostat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Static => "static",
            PolicyKind::Mom => "mom",
            PolicyKind::Proxmox => "proxmox",
            PolicyKind::Aerostat => "aerostat",
        }
    }

    /// The interval the original system samples at; drivers use it unless told otherwise.
    pub fn native_interval(self) -> Millis {
        match self {
            PolicyKind::Static => Millis::secs(10),
            // vdsm runs MoM's policy every 15 s.
            PolicyKind::Mom => Millis::secs(15),
            // pvestatd's cycle.
            PolicyKind::Proxmox => Millis::secs(10),
            PolicyKind::Aerostat => Millis::secs(1),
        }
    }

    pub fn build(self, settings: &PolicySettings) -> Box<dyn Policy> {
        match self {
            PolicyKind::Static => Box::new(static_policy::StaticPolicy),
            PolicyKind::Mom => Box::new(mom::MomPolicy::new()),
            PolicyKind::Proxmox => Box::new(proxmox::ProxmoxPolicy::with_settings(settings)),
            PolicyKind::Aerostat => Box::new(aerostat::AerostatPolicy::new(settings.clone())),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy `{0}` (expected static, mom, proxmox or aerostat)")]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}
