//! `mom`: oVirt MoM's default balloon policy (placeholder until implemented).

use crate::controller::GuardConfig;
use crate::observation::Observation;
use crate::policy::{Policy, Proposal};

#[derive(Debug, Default, Clone)]
pub struct MomPolicy;

impl MomPolicy {
    pub fn new() -> MomPolicy {
        MomPolicy
    }
}

impl Policy for MomPolicy {
    fn name(&self) -> &'static str {
        "mom"
    }
    fn guards(&self) -> GuardConfig {
        GuardConfig::passthrough()
    }
    fn propose(&mut self, _obs: &Observation) -> Vec<Proposal> {
        Vec::new()
    }
}
