//! `static`: never balloons. The "no overcommit management" baseline.

use crate::controller::GuardConfig;
use crate::observation::Observation;
use crate::policy::{Policy, Proposal};
use crate::units::Bytes;

#[derive(Debug, Default, Clone)]
pub struct StaticPolicy;

impl Policy for StaticPolicy {
    fn name(&self) -> &'static str {
        "static"
    }
    fn guards(&self) -> GuardConfig {
        GuardConfig::passthrough()
    }
    fn propose_into(&mut self, _obs: &Observation, _targets: &[Bytes], _out: &mut Vec<Proposal>) {}
}
