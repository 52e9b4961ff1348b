//! `proxmox`: Proxmox VE auto-ballooning (placeholder until implemented).

use crate::controller::GuardConfig;
use crate::observation::Observation;
use crate::policy::{Policy, Proposal};

#[derive(Debug, Default, Clone)]
pub struct ProxmoxPolicy;

impl ProxmoxPolicy {
    pub fn new() -> ProxmoxPolicy {
        ProxmoxPolicy
    }
}

impl Policy for ProxmoxPolicy {
    fn name(&self) -> &'static str {
        "proxmox"
    }
    fn guards(&self) -> GuardConfig {
        GuardConfig::passthrough()
    }
    fn propose(&mut self, _obs: &Observation) -> Vec<Proposal> {
        Vec::new()
    }
}
