//! What the controller decides: actions, each with the rule that chose it and a
//! sentence a person can read.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::units::{Bytes, Millis};

/// The rule behind an action. Stable snake_case names: scripts and tests match on them,
/// `docs/policy.md` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    // --- oVirt MoM (`policy/mom.rs`)
    MomShrink,
    MomGrow,
    MomMinGuarantee,
    // --- Proxmox VE (`policy/proxmox.rs`)
    ProxmoxGrow,
    ProxmoxShrink,
    // --- aerostat (`policy/aerostat.rs`)
    /// Give memory back to a guest whose demand or pressure grew.
    Deflate,
    /// A guest swaps in, stalls or kills processes: give memory at once.
    DeflatePressure,
    /// Take idle memory from a guest, down toward its estimated working set.
    Reclaim,
    /// Host below its reserve (or heading there): take memory, cheapest guest first.
    HostShort,
    /// Balloon does not follow its target: stop pushing, give some back.
    BalloonStalled,
    /// Move the target to the floor or maximum it violated.
    Bounds,
    // --- guards (`controller.rs`)
    /// Target raised to the floor.
    GuardFloor,
    /// Target lowered to the configured maximum.
    GuardMax,
    /// Growth cut or shrink forced to keep the host reserve.
    GuardReserve,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::MomShrink => "mom_shrink",
            Rule::MomGrow => "mom_grow",
            Rule::MomMinGuarantee => "mom_min_guarantee",
            Rule::ProxmoxGrow => "proxmox_grow",
            Rule::ProxmoxShrink => "proxmox_shrink",
            Rule::Deflate => "deflate",
            Rule::DeflatePressure => "deflate_pressure",
            Rule::Reclaim => "reclaim",
            Rule::HostShort => "host_short",
            Rule::BalloonStalled => "balloon_stalled",
            Rule::Bounds => "bounds",
            Rule::GuardFloor => "guard_floor",
            Rule::GuardMax => "guard_max",
            Rule::GuardReserve => "guard_reserve",
        }
    }
}

/// What to do to a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionKind {
    /// Set the balloon target, expressed as guest memory (QMP `balloon value=`).
    Balloon { from: Bytes, to: Bytes },
}

/// One action with its explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub vm: String,
    #[serde(flatten)]
    pub kind: ActionKind,
    pub rule: Rule,
    pub reason: String,
}

impl Action {
    /// The new balloon target, when this is a balloon action.
    pub fn balloon_target(&self) -> Option<Bytes> {
        match self.kind {
            ActionKind::Balloon { to, .. } => Some(to),
        }
    }
}

/// A situation the controller wants a person (or the migration escape) to know about,
/// which no balloon action can fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Alert {
    /// Σ floors + overheads exceed what the host can give guests: only migration helps.
    FloorsDoNotFit { need: Bytes, capacity: Bytes },
    /// Guests under memory pressure (swapping in, refaulting) asked for `unmet` more than
    /// the host could give them this tick, or use that much more than it can hold
    /// ([`crate::policy::Policy::unmet_need`], at least
    /// [`crate::planner::escape::MIN_UNMET`]): their working sets no longer fit, though
    /// their floors may. Only a departure, or more memory, helps.
    WorkingSetsDoNotFit { unmet: Bytes },
    /// `vm`'s QEMU has held `kept` more than its balloon claims the guest kept (`rss −
    /// overhead − actual`) for a minute: a balloon driver that lies, or memory QEMU cannot
    /// discard (huge pages). The reserve guard counts it as used.
    BalloonKeepsMemory { vm: String, kept: Bytes },
}

impl Alert {
    /// Every kind, as serialised (`kind`) and labelled in `/metrics`.
    pub const KINDS: [&'static str; 3] = [
        "floors_do_not_fit",
        "working_sets_do_not_fit",
        "balloon_keeps_memory",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            Alert::FloorsDoNotFit { .. } => Alert::KINDS[0],
            Alert::WorkingSetsDoNotFit { .. } => Alert::KINDS[1],
            Alert::BalloonKeepsMemory { .. } => Alert::KINDS[2],
        }
    }
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alert::FloorsDoNotFit { need, capacity } => write!(
                f,
                "floors do not fit: floors and overheads need {need}, the host gives guests {capacity}"
            ),
            Alert::WorkingSetsDoNotFit { unmet } => write!(
                f,
                "working sets do not fit: guests under memory pressure lack {unmet} the host cannot give"
            ),
            Alert::BalloonKeepsMemory { vm, kept } => write!(
                f,
                "balloon keeps memory: {vm}'s QEMU holds {kept} more than its balloon says the guest kept; counted as used"
            ),
        }
    }
}

/// One tick's output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub time: Millis,
    /// The policy's name (borrowed: a controller does not allocate it every tick).
    pub policy: Cow<'static, str>,
    pub actions: Vec<Action>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Alert::KINDS` is written by hand beside serde's `kind` tag: they must not drift.
    #[test]
    fn alert_kinds_are_the_serialised_tags() {
        let every = [
            Alert::FloorsDoNotFit {
                need: Bytes(2),
                capacity: Bytes(1),
            },
            Alert::WorkingSetsDoNotFit { unmet: Bytes(1) },
            Alert::BalloonKeepsMemory {
                vm: "a".into(),
                kept: Bytes(1),
            },
        ];
        let tags: Vec<String> = every
            .iter()
            .map(|a| {
                let v = serde_json::to_value(a).expect("serialise");
                assert_eq!(v["kind"], a.kind(), "{a:?}");
                a.kind().to_string()
            })
            .collect();
        assert_eq!(tags, Alert::KINDS);
    }
}
