//! `aerostat`: the default policy (placeholder).

use crate::controller::GuardConfig;
use crate::observation::Observation;
use crate::policy::{Policy, Proposal};

#[derive(Debug, Default, Clone)]
pub struct AerostatPolicy;

impl AerostatPolicy {
    pub fn new(_s: crate::policy::PolicySettings) -> AerostatPolicy {
        AerostatPolicy
    }
}

impl Policy for AerostatPolicy {
    fn name(&self) -> &'static str {
        "aerostat"
    }
    fn guards(&self) -> GuardConfig {
        GuardConfig::passthrough()
    }
    fn propose(&mut self, _obs: &Observation) -> Vec<Proposal> {
        Vec::new()
    }
}
