//! The host: RAM, a reserve-sized slice for its own processes, per-VM QEMU overhead,
//! KSM sharing and swap with a bandwidth limit.
//!
//! The host's LRU cannot see inside guests, but it sees which guest pages are touched:
//! when RAM runs out it swaps out guests' cold pages (free-but-touched, cold cache, cold
//! anon) first, proportionally across guests, then hot pages, which the guests fault
//! straight back (host-level thrashing). When swap is full too, the host OOM killer
//! kills the VM with the most resident memory: a lost VM.

use aerostat_core::ksm::{KsmPolicy, KsmSample, KsmTuning};
use aerostat_core::{Bytes, HostSample};

use crate::guest::{Guest, HOT_ACCESS_PER_S};
use crate::scenario::{HostSpec, KsmControl};

/// How often MoM's KSM rule runs under `KsmControl::Mom` (the daemon's `[ksm] interval`
/// default).
const KSM_INTERVAL_S: f64 = 10.0;
/// ksmd's `pages_to_scan` at boot (Linux's default), before the rule first steps it.
const KSM_BOOT_PAGES: u64 = 100;
const PAGE: f64 = 4096.0;

#[derive(Clone, Debug, Default)]
pub struct HostEffects {
    pub swap_out: f64,
    pub swap_in: f64,
    /// Index of a VM the host OOM killer killed this tick.
    pub killed: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Host {
    pub spec: HostSpec,
    memory: f64,
    swap: f64,
    bw: f64,
    overhead: f64,
    pub used: f64,
    pub swap_used: f64,
    pub swap_in_total: f64,
    pub swap_out_total: f64,
    pub psi_some_us: f64,
    /// Guest memory KSM merged away, as of the last `refresh`.
    pub ksm_saved: f64,
    /// The share of the guests' backed memory KSM has merged away: `spec.ksm` from the
    /// start under `KsmControl::Always`; under `Mom`, what ksmd has reached.
    ksm_share: f64,
    /// MoM's KSM rule and ksmd's state, under `KsmControl::Mom`.
    ksmd: Option<Ksmd>,
}

/// ksmd run by MoM's rule. Merging is modelled as first order: ksmd scans
/// `pages_to_scan` pages every `sleep_ms`, and each scanned byte of guest memory moves the
/// merged share toward `spec.ksm` by its part of all the guests' backed memory — so a full
/// pass brings it 63 % of the way. (The lab's guest, 2 MiB/s on a 1.25 GiB host, showed its
/// first merges after 110–120 s of a 768 s pass.) A stopped ksmd keeps what it merged; the
/// copies guests' writes make of merged pages are not modelled.
#[derive(Clone, Debug)]
struct Ksmd {
    policy: KsmPolicy,
    tuning: KsmTuning,
    pages_to_scan: u64,
    /// Seconds since the run began, and when the rule runs next.
    clock_s: f64,
    next_decision_s: f64,
}

impl Host {
    pub fn new(spec: HostSpec) -> Host {
        Host {
            memory: spec.memory.as_f64(),
            swap: spec.swap.as_f64(),
            bw: spec.swap_bandwidth.as_f64(),
            overhead: spec.vm_overhead.as_f64(),
            used: spec.system.as_f64(),
            swap_used: 0.0,
            swap_in_total: 0.0,
            swap_out_total: 0.0,
            psi_some_us: 0.0,
            ksm_saved: 0.0,
            ksm_share: match spec.ksm_control {
                KsmControl::Always => spec.ksm,
                KsmControl::Mom => 0.0,
            },
            ksmd: (spec.ksm_control == KsmControl::Mom).then(|| Ksmd {
                policy: KsmPolicy::new(),
                tuning: KsmTuning::Stop,
                pages_to_scan: KSM_BOOT_PAGES,
                clock_s: 0.0,
                next_decision_s: 0.0,
            }),
            spec,
        }
    }

    /// Under `KsmControl::Mom`: MoM's rule every KSM_INTERVAL_S on the host as it stands
    /// (free = RAM − used: the simulated host has no page cache of its own; shareable = the
    /// alive guests' configured memory, as the daemon counts it), then `dt_s` of ksmd's
    /// scanning at the pace it set.
    fn run_ksmd(&mut self, guests: &[Guest], alive: &[bool], dt_s: f64) {
        let Some(k) = self.ksmd.as_mut() else {
            return;
        };
        if k.clock_s >= k.next_decision_s {
            k.next_decision_s += KSM_INTERVAL_S;
            let sample = KsmSample {
                total: Bytes::from_f64(self.memory),
                free: Bytes::from_f64(self.memory - self.used),
                shareable: guests
                    .iter()
                    .zip(alive)
                    .filter(|(_, a)| **a)
                    .map(|(g, _)| g.spec.memory)
                    .sum(),
                pages_to_scan: k.pages_to_scan,
            };
            k.tuning = k.policy.decide(&sample).0;
            if let KsmTuning::Run { pages_to_scan, .. } = k.tuning {
                k.pages_to_scan = pages_to_scan;
            }
        }
        k.clock_s += dt_s;
        if let KsmTuning::Run {
            sleep_ms,
            pages_to_scan,
        } = k.tuning
        {
            let backed = Self::all_backed(guests, alive);
            if backed > 0.0 {
                let scanned = pages_to_scan as f64 * PAGE * dt_s * 1000.0 / sleep_ms.max(1) as f64;
                self.ksm_share += (self.spec.ksm - self.ksm_share) * (scanned / backed).min(1.0);
            }
        }
    }

    /// ksmd's state under `KsmControl::Mom`: whether it runs, and its `pages_to_scan`.
    pub fn ksmd_state(&self) -> Option<(bool, u64)> {
        self.ksmd
            .as_ref()
            .map(|k| (matches!(k.tuning, KsmTuning::Run { .. }), k.pages_to_scan))
    }

    /// Guest memory the host holds, before KSM merges it.
    pub(crate) fn guest_backed(g: &Guest) -> f64 {
        (g.touched - g.host_swapped_cold - g.host_swapped_hot).max(0.0)
    }

    /// Guest memory the host holds for all alive guests, before KSM merges it.
    fn all_backed(guests: &[Guest], alive: &[bool]) -> f64 {
        guests
            .iter()
            .zip(alive)
            .filter(|(_, a)| **a)
            .map(|(g, _)| Self::guest_backed(g))
            .sum()
    }

    fn guest_resident(&self, g: &Guest) -> f64 {
        Self::guest_backed(g) * (1.0 - self.ksm_share)
    }

    /// Recomputes host used and what KSM saves (after the guests moved).
    pub fn refresh(&mut self, guests: &[Guest], alive: &[bool]) {
        let used = self.compute_used(guests, alive);
        self.refresh_with(used, guests, alive);
    }

    /// [`Host::refresh`] with host used already computed from the guests as they are.
    fn refresh_with(&mut self, used: f64, guests: &[Guest], alive: &[bool]) {
        self.used = used;
        self.ksm_saved = if self.ksm_share > 0.0 {
            Self::all_backed(guests, alive) * self.ksm_share
        } else {
            0.0
        };
    }

    /// Host memory in use now.
    pub fn compute_used(&self, guests: &[Guest], alive: &[bool]) -> f64 {
        let mut used = self.spec.system.as_f64();
        for (g, _) in guests.iter().zip(alive).filter(|(_, a)| **a) {
            used += self.overhead + self.guest_resident(g);
        }
        used
    }

    /// Balances host memory after the guests moved; adds host-swap stalls to `stalls`.
    pub fn step(
        &mut self,
        guests: &mut [Guest],
        alive: &[bool],
        stalls: &mut [f64],
        dt_s: f64,
    ) -> HostEffects {
        let mut fx = HostEffects::default();
        self.run_ksmd(guests, alive, dt_s);
        // Swapped pages the guest no longer backs are dropped; hot ones are touched back.
        let mut swap_used = 0.0;
        for (i, g) in guests.iter_mut().enumerate() {
            if !alive[i] {
                continue;
            }
            let hot = g.host_hot();
            let cold = (g.touched - hot).max(0.0);
            g.host_swapped_cold = g.host_swapped_cold.min(cold);
            g.host_swapped_hot = g.host_swapped_hot.min(hot);
            if g.host_swapped_hot > 0.0 {
                let s = (g.host_swapped_hot * HOT_ACCESS_PER_S * dt_s).min(g.host_swapped_hot);
                g.host_swapped_hot -= s;
                fx.swap_in += s;
                stalls[i] += s / self.bw;
            }
            swap_used += g.host_swapped_cold + g.host_swapped_hot;
        }
        self.swap_used = swap_used;

        let used = self.compute_used(guests, alive);
        let mut excess = used - self.memory;
        // Whether host swap-out below moved guest pages (and so changed host used).
        let swapped_out = excess > 0.0;
        if excess > 0.0 {
            // Cold pages first, then hot, proportionally to what each guest has.
            for hot_pass in [false, true] {
                if excess <= 0.0 {
                    break;
                }
                let avail = |g: &Guest| -> f64 {
                    let hot = g.host_hot();
                    if hot_pass {
                        (hot - g.host_swapped_hot).max(0.0)
                    } else {
                        (g.touched - hot - g.host_swapped_cold).max(0.0)
                    }
                };
                let total: f64 = guests
                    .iter()
                    .zip(alive)
                    .filter(|(_, a)| **a)
                    .map(|(g, _)| avail(g))
                    .sum();
                let room = (self.swap - self.swap_used).max(0.0);
                // Resident bytes freed per swapped byte: KSM-merged pages free less.
                let take = (excess / (1.0 - self.ksm_share)).min(total).min(room);
                if take <= 0.0 || total <= 0.0 {
                    continue;
                }
                for (i, g) in guests.iter_mut().enumerate() {
                    if !alive[i] {
                        continue;
                    }
                    let share = take * avail(g) / total;
                    if hot_pass {
                        g.host_swapped_hot += share;
                    } else {
                        g.host_swapped_cold += share;
                    }
                }
                self.swap_used += take;
                fx.swap_out += take;
                excess -= take * (1.0 - self.ksm_share);
            }
            // Writing faster than the swap device allows stalls whoever allocates.
            let late = (fx.swap_out - self.bw * dt_s) / self.bw;
            if late > 0.0 {
                for (s, a) in stalls.iter_mut().zip(alive) {
                    if *a {
                        *s += late;
                    }
                }
            }
            if excess > 1.0 {
                // RAM and swap are full: the OOM killer takes the biggest VM.
                fx.killed = guests
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| alive[*i])
                    .max_by(|a, b| {
                        self.guest_resident(a.1)
                            .total_cmp(&self.guest_resident(b.1))
                    })
                    .map(|(i, _)| i);
            }
        }
        self.swap_in_total += fx.swap_in;
        self.swap_out_total += fx.swap_out;
        let worst = stalls.iter().cloned().fold(0.0, f64::max).min(dt_s);
        self.psi_some_us += worst * 1e6;
        // Host used as computed above still holds unless swap-out moved pages: no second
        // pass over the guests on the ticks (nearly all) when the host has room.
        if swapped_out {
            self.refresh(guests, alive);
        } else {
            self.refresh_with(used, guests, alive);
        }
        fx
    }

    /// What the host's probes would report.
    pub fn sample(&self) -> HostSample {
        let free = Bytes::from_f64(self.memory - self.used);
        HostSample {
            total: Bytes::from_f64(self.memory),
            free,
            available: free,
            buffers_cached: Bytes::ZERO,
            swap_total: Bytes::from_f64(self.swap),
            swap_free: Bytes::from_f64(self.swap - self.swap_used),
            swap_in: Bytes::from_f64(self.swap_in_total),
            swap_out: Bytes::from_f64(self.swap_out_total),
            psi_some_us: Some(self.psi_some_us as u64),
            psi_full_us: None,
            // What the host's /sys/kernel/mm/ksm/pages_sharing says, as bytes.
            ksm_saved: Some(Bytes::from_f64(self.ksm_saved)),
            unmanaged: Bytes::ZERO,
        }
    }
}

/// Convenience for reports.
pub fn gib(v: f64) -> f64 {
    v / Bytes::GIB as f64
}
