//! What the `aerostat` policy wishes for one VM each tick, and why: the numbers behind the
//! wish, turned into a sentence only for the proposals the controller sends.

use std::fmt::Write as _;

use crate::decision::Rule;
use crate::observation::VmSample;
use crate::policy::PolicySettings;
use crate::units::{Bytes, Millis};

use super::memo::Restart;
use super::reading::Unbacked;
use super::{MIB, MIN_RECLAIM_EFFICIENCY, STALL_GIVEBACK};

/// What the policy asks for one VM this tick. When the host is short, the fit
/// (`fit::fit_host`) lowers `target` through three floors, cheapest first: `idle_floor`,
/// then `resident` (or `lowest`, if higher), then `lowest`.
#[derive(Debug, Clone)]
pub(super) struct Wish {
    /// Index into `Observation::vms`.
    pub(super) vm: usize,
    /// The balloon target asked for.
    pub(super) target: f64,
    /// The least the fit may take the target down to.
    pub(super) lowest: f64,
    /// `used` plus the cache it keeps: what the guest holds resident without headroom.
    /// Down to here (or `lowest`, if higher) the wish is headroom; below it the host takes
    /// hot cache, which only a real shortage justifies.
    pub(super) resident: f64,
    /// (`used` plus a sliver of room, that plus the page cache it keeps — `keep`, what the
    /// probe has not found cold), whatever the target: what
    /// [`Policy::working_set`](crate::policy::Policy::working_set) reports to the reserve
    /// guard.
    pub(super) working_set: (f64, f64),
    /// Down to here the wish is idle headroom of a guest that is not growing: taken first
    /// when the host is short (ESX's idle-memory tax, in spirit).
    pub(super) idle_floor: f64,
    /// The class's weight × the VM's priority: in the host-short order, higher gives
    /// memory later.
    pub(super) weight: f64,
    pub(super) rule: Rule,
    pub(super) explain: Explain,
    /// (host short by, taken from this VM), when the host was short.
    pub(super) host_short: Option<(f64, f64)>,
}

/// The numbers behind a wish; turned into text only for the proposals the controller
/// sends (formatting every VM's reason every tick would dominate the simulator's time).
#[derive(Debug, Clone, Copy)]
pub(super) enum Explain {
    /// The usual case: the guest's need and how it was found.
    Need(Need),
    /// The balloon did not follow its target (`target`, bytes) and moved `moved_bps`.
    Stalled {
        actual: f64,
        target: f64,
        moved_bps: f64,
        /// How long inflation stops.
        block: Millis,
    },
}

/// A guest's need and its parts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Need {
    pub(super) need: f64,
    /// Cold anonymous memory pushed into guest swap this tick (0: none).
    pub(super) cold_bite: f64,
    /// The least free memory and cache a roomy host's guest keeps (0 elsewhere).
    pub(super) burst_room: f64,
    /// Free memory kept above the hot cache for a burst the guest is known to make: the
    /// operator's headroom or a burst it made (0: none).
    pub(super) burst_free: f64,
    pub(super) used: f64,
    /// Room kept for a workload an OOM kill stopped, or that stopped itself (above `used`).
    pub(super) restart: f64,
    pub(super) restart_why: Restart,
    pub(super) keep: f64,
    pub(super) cache: f64,
    pub(super) headroom: f64,
    /// The share of the class's headroom a nearly full host left (1: all of it).
    pub(super) headroom_scale: f64,
    pub(super) detail: Detail,
    /// Guest claims the host's measure did not back.
    pub(super) unbacked: Unbacked,
}

/// How the cache allowance (`keep`) moved this tick, and why.
#[derive(Debug, Clone, Copy)]
pub(super) enum Detail {
    Pressure {
        swap_in_bps: f64,
        /// What the host saw it write to its swap disk on its own (`Reading::swap_out_bps`).
        swap_out_bps: f64,
        refault_pps: f64,
        new_ooms: u64,
        /// Taken back from the balloon by a deflate-on-oom guest (0: none).
        self_deflated: f64,
        boost: f64,
    },
    /// The guest's reclaim efficiency fell below `stop`.
    Efficiency {
        efficiency: f64,
        stop: f64,
    },
    Probing,
    Keeping,
}

impl Wish {
    /// The reason for this wish as a sentence, for an action the controller sends.
    pub(super) fn text(
        &self,
        settings: &PolicySettings,
        vm: &VmSample,
        host_total: Bytes,
    ) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        if let Some((short, take)) = self.host_short {
            let _ = write!(
                text,
                "host short by {:.0} MiB (total {} − reserve {}): {} gives up {:.0} MiB of room (weight {:.1}); ",
                short / MIB,
                host_total,
                settings.reserve,
                vm.name,
                take / MIB,
                self.weight
            );
        }
        let n = match self.explain {
            Explain::Need(n) => n,
            Explain::Stalled {
                actual,
                target,
                moved_bps,
                block,
            } => {
                let _ = write!(
                    text,
                    "balloon stalled: actual {:.0} MiB, target {:.0} MiB, moving {:.1} MB/s; giving {:.0} MiB back, no inflation for {}",
                    actual / MIB,
                    target / MIB,
                    moved_bps / 1e6,
                    STALL_GIVEBACK / MIB,
                    block
                );
                return text;
            }
        };
        let _ = write!(
            text,
            "need {:.0} MiB = used {:.0}",
            n.need / MIB,
            n.used / MIB
        );
        if n.restart > 0.0 {
            let _ = match n.restart_why {
                Restart::Killed => {
                    write!(text, " + {:.0} used before an OOM kill", n.restart / MIB)
                }
                Restart::Stopped => write!(
                    text,
                    " + {:.0} used before its workload stopped (kept for its restart)",
                    n.restart / MIB
                ),
            };
        }
        let _ = write!(
            text,
            " + cache {:.0} + headroom {:.0}; ",
            n.keep / MIB,
            n.headroom / MIB
        );
        if n.burst_free >= MIB {
            let _ = write!(
                text,
                "at least {:.0} MiB kept free for a burst this guest is known to make (the operator's headroom, or a burst it made); ",
                n.burst_free / MIB
            );
        } else if n.need > n.used + n.restart + n.keep + n.headroom + 0.5 * MIB {
            let _ = write!(
                text,
                "burst room: at least {:.0} MiB free or cache for a burst the next reading has not seen; ",
                n.burst_room / MIB
            );
        }
        if n.cold_bite >= MIB {
            let _ = write!(
                text,
                "pushing {:.0} MiB of cold anonymous memory into guest swap (the host saw the guest's memory idle beyond its free memory and cache): target below what it holds resident; ",
                n.cold_bite / MIB
            );
        }
        if let Some((claimed, counted)) = n.unbacked.used {
            let _ = write!(
                text,
                "the guest claims {:.0} MiB used, more than the host saw it touch: counting {:.0}; ",
                claimed / MIB,
                counted / MIB
            );
        }
        if let Some((claimed, counted)) = n.unbacked.accessed {
            let _ = write!(
                text,
                "the guest claims {:.0} MiB used, less than the host saw it access in its last window: counting {:.0}; ",
                claimed / MIB,
                counted / MIB
            );
        }
        if let Some((claimed, counted)) = n.unbacked.free {
            let _ = write!(
                text,
                "the guest claims {:.0} MiB free, less than the host never saw it touch: counting {:.0}; ",
                claimed / MIB,
                counted / MIB
            );
        }
        if n.headroom_scale < 1.0 {
            let _ = write!(
                text,
                "host nearly full: {:.0}% of the class's headroom; ",
                100.0 * n.headroom_scale
            );
        }
        let _ = match n.detail {
            Detail::Pressure {
                swap_in_bps,
                swap_out_bps,
                refault_pps,
                new_ooms,
                self_deflated,
                boost,
            } => write!(
                text,
                "guest under pressure (swap-in {:.1} MiB/s,{} major faults {:.0}/s, {} new OOM kills{}): +{:.0} MiB",
                swap_in_bps / MIB,
                if swap_out_bps > 0.0 {
                    format!(
                        " swap-out {:.1} MiB/s on its own (its swap disk's writes),",
                        swap_out_bps / MIB
                    )
                } else {
                    String::new()
                },
                refault_pps,
                new_ooms,
                if self_deflated > 0.0 {
                    format!(
                        ", {:.0} MiB taken back from its deflate-on-oom balloon",
                        self_deflated / MIB
                    )
                } else {
                    String::new()
                },
                boost / MIB
            ),
            Detail::Efficiency { efficiency, stop } => write!(
                text,
                "guest reclaim efficiency {:.0}% < {:.0}%{}: only hot page cache left, keeping {:.0} MiB of it",
                100.0 * efficiency,
                100.0 * stop,
                if stop > MIN_RECLAIM_EFFICIENCY {
                    " (host roomy)"
                } else {
                    ""
                },
                n.keep / MIB
            ),
            Detail::Probing => write!(
                text,
                "probing page cache: keep {:.0} MiB of {:.0} MiB",
                n.keep / MIB,
                n.cache / MIB
            ),
            Detail::Keeping => write!(text, "keeping {:.0} MiB of page cache", n.keep / MIB),
        };
        text
    }
}
